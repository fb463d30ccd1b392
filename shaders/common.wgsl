// Shared prelude, prepended to every shader in shaders/ (see src/engine/shader.rs).

// Flat invocation index over a grid whose workgroups spill from x into y (Engine::grid).
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.x + gid.y * nwg.x * wg;
}
