//! `golden/routing.json` (LLaDA2.2's block routing): the experts every position of the forward
//! cases chose, in selection order, per MoE layer, on every backend that reports its routing;
//! and every choice lies in its routing block's allowed set.

use serde_json::Value;
use unmask_core::{Capture, Model};
use unmask_tests::{
    backend_wanted, backends, golden_forward, golden_models, read_golden_tensors, read_json,
    GoldenTensor,
};

#[test]
fn every_position_routes_to_the_golden_experts() {
    let mut checked = 0;
    for dir in golden_models() {
        let path = dir.join("golden/routing.json");
        if !path.exists() {
            continue;
        }
        let golden: Value = read_json(&path);
        let model = Model::open(&dir).unwrap();
        let c = &model.config;
        assert_eq!(golden["expert_capacity"], c.expert_capacity);
        assert_eq!(golden["block_size"], c.block_size);
        let k = c.num_experts_per_tok;
        let forward = read_golden_tensors(&dir.join("golden/forward.safetensors"));
        for be in backends() {
            let mut backend = (be.make)(&model).unwrap();
            for (case, layers) in golden["cases"].as_object().unwrap() {
                let GoldenTensor::Ids(ids) = &forward[&format!("{case}.input_ids")] else {
                    panic!("{case}: input ids")
                };
                golden_forward(backend.as_mut(), &model, ids, Capture::Logits);
                let Some(routing) = backend.last_routing() else {
                    println!("{}: routing not reported by this backend", be.name);
                    continue;
                };
                let moe_layers: Vec<usize> = (0..c.num_hidden_layers)
                    .filter(|&l| c.is_moe_layer(l))
                    .collect();
                assert_eq!(routing.len(), moe_layers.len());
                for (got, layer) in routing.iter().zip(&moe_layers) {
                    let want = &layers[layer.to_string()];
                    let want_ids: Vec<u32> = want["topk_ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|row| row.as_array().unwrap().iter())
                        .map(|v| v.as_u64().unwrap() as u32)
                        .collect();
                    assert_eq!(got, &want_ids, "{}: {case}: layer {layer}", be.name);
                    for (t, row) in got.chunks_exact(k).enumerate() {
                        let allowed = &want["allowed"][t / c.block_size];
                        for e in row {
                            assert!(
                                allowed.as_array().unwrap().contains(&Value::from(*e)),
                                "{case}: layer {layer}: position {t} chose {e} outside its block"
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    // The reference backend reports its routing (unless UNMASK_TEST_BACKENDS leaves it out).
    assert!(
        checked > 0 || !backend_wanted("reference"),
        "no routing golden was checked"
    );
}
