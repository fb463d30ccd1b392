//! Portability evidence without the hardware: every shader proxdm compiles parses and validates
//! with naga, and translates to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL (GL).
//! The SPIR-V is read back by naga's SPIR-V front end and validated again.

use proxdm::engine::shader::parse_and_validate;

fn compute_entries(name: &str, module: &naga::Module) -> Vec<String> {
    module
        .entry_points
        .iter()
        .inspect(|e| {
            assert_eq!(
                e.stage,
                naga::ShaderStage::Compute,
                "{name}::{} is not a compute entry",
                e.name
            )
        })
        .map(|e| e.name.clone())
        .collect()
}

#[test]
fn every_shader_translates_to_spirv_msl_hlsl_and_glsl() {
    let shaders = proxdm::ops::all_shaders();
    assert!(
        shaders.len() >= 12,
        "expected the whole kernel library, got {}",
        shaders.len()
    );
    let mut translated = 0;
    for shader in shaders {
        let name = shader.name;
        let (module, info) =
            parse_and_validate(name, shader.source()).unwrap_or_else(|e| panic!("{e}"));
        let entries = compute_entries(name, &module);
        assert!(!entries.is_empty(), "{name} has no entry point");

        // SPIR-V (Vulkan), then back through naga's SPIR-V reader and validator.
        let words =
            naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None)
                .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));
        assert_eq!(words[0], 0x0723_0203, "{name}: SPIR-V magic");
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let back = naga::front::spv::parse_u8_slice(&bytes, &naga::front::spv::Options::default())
            .unwrap_or_else(|e| panic!("{name}: SPIR-V read back: {e}"));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&back)
        .unwrap_or_else(|e| panic!("{name}: SPIR-V round trip invalid: {e:?}"));

        // MSL (Metal), all entry points at once.
        let msl_opts = naga::back::msl::Options {
            lang_version: (2, 4),
            ..Default::default()
        };
        let (msl, _) = naga::back::msl::write_string(
            &module,
            &info,
            &msl_opts,
            &naga::back::msl::PipelineOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: MSL: {e}"));
        for e in &entries {
            assert!(
                msl.contains(&format!("kernel void {e}")),
                "{name}: MSL lacks kernel {e}"
            );
        }

        // The subgroup variants run only where the adapter has subgroups: Metal 2.1+, DX12 with
        // shader model 6.0+ (DXC), desktop GL with GL_KHR_shader_subgroup (wgpu's GL back end
        // exposes none, so for GL this is a syntax check).
        let sg = shader.uses_subgroups();

        // HLSL (DX12), shader model 5.1 (the FXC path, the strictest), 6.0 for subgroups.
        let mut hlsl = String::new();
        let hlsl_opts = naga::back::hlsl::Options {
            shader_model: if sg {
                naga::back::hlsl::ShaderModel::V6_0
            } else {
                naga::back::hlsl::ShaderModel::V5_1
            },
            ..Default::default()
        };
        let hlsl_pipe = naga::back::hlsl::PipelineOptions::default();
        naga::back::hlsl::Writer::new(&mut hlsl, &hlsl_opts, &hlsl_pipe)
            .write(&module, &info, None)
            .unwrap_or_else(|e| panic!("{name}: HLSL: {e}"));
        assert!(
            hlsl.contains("[numthreads("),
            "{name}: HLSL has no compute entry"
        );

        // GLSL ES 3.10 (wgpu's GL back end), one entry point at a time; desktop 4.50 for
        // the subgroup variants.
        for e in &entries {
            let mut glsl = String::new();
            let opts = naga::back::glsl::Options {
                version: if sg {
                    naga::back::glsl::Version::Desktop(450)
                } else {
                    naga::back::glsl::Version::new_gles(310)
                },
                ..Default::default()
            };
            let pipe = naga::back::glsl::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: e.clone(),
                multiview: None,
            };
            naga::back::glsl::Writer::new(
                &mut glsl,
                &module,
                &info,
                &opts,
                &pipe,
                naga::proc::BoundsCheckPolicies::default(),
            )
            .and_then(|mut w| w.write())
            .unwrap_or_else(|err| panic!("{name}::{e}: GLSL: {err}"));
            assert!(
                glsl.contains("layout(local_size_x"),
                "{name}::{e}: GLSL has no compute layout"
            );
            translated += 1;
        }
    }
    assert!(
        translated >= 25,
        "only {translated} entry points translated"
    );
}

#[test]
fn a_broken_shader_is_reported_with_its_name_and_naga_message() {
    let err = parse_and_validate("broken", "fn f() -> u32 { return 1.0; }")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shader 'broken' is invalid") && err.contains("return"),
        "{err}"
    );
}
