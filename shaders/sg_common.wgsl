// Prelude of the subgroup ("sg8") kernel variants, prepended after common.wgsl.
//
// These variants are for adapters whose subgroups are exactly 8 lanes (lavapipe on AVX2 CPUs).
// There a load from a storage buffer costs ~14 cycles per 8 lanes whether or not the address is
// uniform, while subgroupBroadcast costs ~2 and a multiply-add ~1 (measured, docs/PERFORMANCE.md).
// So each lane loads one value of the left operand for one of 8 rows and the subgroup shares
// them by broadcast: a lane holds a 16 x 4 block of the output (two row groups of 8) and per
// step of the reduction loads 2 + 4 values for 64 multiply-adds.

// The 16 x 4 accumulator block of one lane; fields, not an array, so it stays in registers.
struct Acc {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
    r4: vec4<f32>,
    r5: vec4<f32>,
    r6: vec4<f32>,
    r7: vec4<f32>,
    r8: vec4<f32>,
    r9: vec4<f32>,
    r10: vec4<f32>,
    r11: vec4<f32>,
    r12: vec4<f32>,
    r13: vec4<f32>,
    r14: vec4<f32>,
    r15: vec4<f32>,
}

fn acc_zero() -> Acc {
    let z = vec4<f32>(0.0);
    return Acc(z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z);
}

// acc.r[t] += a0 of lane t * v, acc.r[8 + t] += a1 of lane t * v, for t < 8.
fn acc_step(acc: ptr<function, Acc>, a0: f32, a1: f32, v: vec4<f32>) {
    (*acc).r0 += subgroupBroadcast(a0, 0u) * v;
    (*acc).r1 += subgroupBroadcast(a0, 1u) * v;
    (*acc).r2 += subgroupBroadcast(a0, 2u) * v;
    (*acc).r3 += subgroupBroadcast(a0, 3u) * v;
    (*acc).r4 += subgroupBroadcast(a0, 4u) * v;
    (*acc).r5 += subgroupBroadcast(a0, 5u) * v;
    (*acc).r6 += subgroupBroadcast(a0, 6u) * v;
    (*acc).r7 += subgroupBroadcast(a0, 7u) * v;
    (*acc).r8 += subgroupBroadcast(a1, 0u) * v;
    (*acc).r9 += subgroupBroadcast(a1, 1u) * v;
    (*acc).r10 += subgroupBroadcast(a1, 2u) * v;
    (*acc).r11 += subgroupBroadcast(a1, 3u) * v;
    (*acc).r12 += subgroupBroadcast(a1, 4u) * v;
    (*acc).r13 += subgroupBroadcast(a1, 5u) * v;
    (*acc).r14 += subgroupBroadcast(a1, 6u) * v;
    (*acc).r15 += subgroupBroadcast(a1, 7u) * v;
}

// Row t of the block.
fn acc_row(acc: ptr<function, Acc>, t: u32) -> vec4<f32> {
    switch t {
        case 0u: { return (*acc).r0; }
        case 1u: { return (*acc).r1; }
        case 2u: { return (*acc).r2; }
        case 3u: { return (*acc).r3; }
        case 4u: { return (*acc).r4; }
        case 5u: { return (*acc).r5; }
        case 6u: { return (*acc).r6; }
        case 7u: { return (*acc).r7; }
        case 8u: { return (*acc).r8; }
        case 9u: { return (*acc).r9; }
        case 10u: { return (*acc).r10; }
        case 11u: { return (*acc).r11; }
        case 12u: { return (*acc).r12; }
        case 13u: { return (*acc).r13; }
        case 14u: { return (*acc).r14; }
        case 15u: { return (*acc).r15; }
        default: { return vec4<f32>(0.0); }
    }
}
