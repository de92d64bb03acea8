//! How many loop iterations one shader invocation runs on the default adapter: llvmpipe
//! (lavapipe) stops every loop of an invocation once they have run 65535 iterations in all,
//! which is why the attention splits long contexts into key ranges there (docs/performance.md).
//! A loop asked for N iterations that returns fewer shows the cap. Run:
//! `cargo run --release -p unmask-wgpu --example llvmpipe_loop_budget`.
use wgpu::util::DeviceExt;
fn main() {
    let inst = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter =
        pollster::block_on(inst.request_adapter(&wgpu::RequestAdapterOptions::default())).unwrap();
    println!("adapter: {}", adapter.get_info().name);
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let src = r#"
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@group(0) @binding(1) var<storage, read> n: array<u32>;
@compute @workgroup_size(1)
fn main() {
    var c = 0u;
    for (var i = 0u; i < n[0]; i++) { c += 1u; }
    var d = 0u;
    for (var i = 0u; i < n[1]; i++) { d += 1u; }
    out[0] = c;
    out[1] = d;
}"#;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    let pipe = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    for (a, b) in [
        (1000u32, 0u32),
        (65534, 0),
        (65535, 0),
        (65536, 0),
        (70000, 0),
        (100000, 0),
        (40000, 40000),
        (30000, 30000),
        (65535, 10),
    ] {
        let out = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 8,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let nb = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&[a, b]),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let rb = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 8,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: out.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: nb.as_entire_binding(),
                },
            ],
        });
        let mut enc = device.create_command_encoder(&Default::default());
        {
            let mut p = enc.begin_compute_pass(&Default::default());
            p.set_pipeline(&pipe);
            p.set_bind_group(0, &bg, &[]);
            p.dispatch_workgroups(1, 1, 1);
        }
        enc.copy_buffer_to_buffer(&out, 0, &rb, 0, 8);
        queue.submit([enc.finish()]);
        rb.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
        let v: Vec<u32> = bytemuck::cast_slice(&rb.slice(..).get_mapped_range().unwrap()).to_vec();
        println!(
            "two loops asked for {a} + {b} iterations ran {} + {}",
            v[0], v[1]
        );
    }
}
