//! Where CUDA cannot run (no driver, no NVRTC, no GPU), opening the backend is an error that says
//! why, never a panic. On a GPU machine the probe instead describes the device.

use unmask_core::model::llada2;
use unmask_core::synthetic::{random_weights, shape_config};
use unmask_core::weights::DType;
use unmask_cuda::{probe, CudaBackend, CudaOptions};

#[test]
fn the_backend_opens_or_says_why_not() {
    let c = shape_config("tiny").unwrap();
    let store = random_weights(&c, DType::BF16, 1).unwrap();
    let made = CudaBackend::new(
        llada2::build(&c),
        &store,
        CudaOptions::default(),
        &mut |_, _| {},
    );
    match probe(0) {
        Ok(info) => {
            assert!(info.device_count >= 1 && info.memory_bytes > 0, "{info:?}");
            let b = made.unwrap_or_else(|e| panic!("a CUDA device is present but: {e}"));
            println!("cuda: {}", unmask_core::Backend::name(&b));
        }
        Err(e) => {
            let msg = e.to_string();
            println!("cuda: absent here: {msg}");
            assert!(msg.starts_with("backend cuda: "), "{msg}");
            assert!(
                [
                    "no CUDA driver",
                    "NVRTC was not found",
                    "no CUDA device",
                    "did not initialise"
                ]
                .iter()
                .any(|w| msg.contains(w)),
                "{msg}"
            );
            let err = made.err().expect("no device, yet the backend opened");
            assert_eq!(
                err.to_string(),
                msg,
                "the backend reports the probe's reason"
            );
        }
    }
}
