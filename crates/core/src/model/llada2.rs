//! The LLaDA2 (`llada2_moe`) forward pass of SPEC §2 as a graph, and the tensors it reads.

use crate::config::Config;
use crate::graph::{
    BlockRouting, Elem, ExpertSet, Graph, GraphBuilder, Heads, Op, Routing, Rows, WeightRole,
};

/// Every tensor the forward pass reads, with the shape the config implies (PyTorch `[out, in]`).
pub fn expected_tensors(c: &Config) -> Vec<(String, Vec<usize>)> {
    build(c)
        .weights
        .into_iter()
        .map(|w| (w.name, w.shape))
        .collect()
}

/// Parameter counts: (total, active per token).
pub fn parameter_counts(c: &Config) -> (u64, u64) {
    let mut total = 0u64;
    let mut active = 0u64;
    for (name, shape) in expected_tensors(c) {
        let n: u64 = shape.iter().map(|&d| d as u64).product();
        total += n;
        if name.contains(".mlp.experts.") {
            // One expert's share of the routed experts is active per chosen expert.
            active += n * c.num_experts_per_tok as u64 / c.num_experts.max(1) as u64;
        } else {
            // The embedding table counts in full, as in the published "1.4B active" figure.
            active += n;
        }
    }
    (total, active)
}

pub fn build(c: &Config) -> Graph {
    let mut g = GraphBuilder::default();
    let h = c.hidden_size;
    let heads = Heads {
        q: c.num_attention_heads,
        kv: c.num_key_value_heads,
        dim: c.head_dim,
    };
    let input_ids = g.buffer("input_ids", Rows::Tokens, 1, Elem::U32);
    let embed = g.weight(
        "model.word_embeddings.weight",
        vec![c.vocab_size, h],
        WeightRole::Embedding,
    );
    let mut x = g.f32("hidden.0", Rows::Tokens, h);
    g.op(Op::Embed {
        ids: input_ids,
        table: embed,
        out: x,
    });
    let mut hidden = vec![x];
    // The last layer's (residual, block output), not yet added: the next layer adds it in its
    // first norm, so the residual stream costs no pass of its own.
    let mut residual = None;

    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let l = |s: &str| format!("L{i}.{s}");

        // Attention block.
        let ln1 = g.weight(
            format!("{p}.input_layernorm.weight"),
            vec![h],
            WeightRole::Vector,
        );
        let a = g.f32(l("attn_norm"), Rows::Tokens, h);
        match residual.take() {
            // The previous layer's residual add, in one op with this layer's first norm.
            Some((x_mid, y)) => g.op(Op::AddRmsNorm {
                a: x_mid,
                b: y,
                weight: ln1,
                sum: x,
                out: a,
                eps: c.rms_norm_eps,
            }),
            None => g.op(Op::RmsNorm {
                x,
                weight: ln1,
                out: a,
                eps: c.rms_norm_eps,
            }),
        }
        let wqkv = g.weight(
            format!("{p}.attention.query_key_value.weight"),
            vec![c.qkv_rows(), h],
            WeightRole::Matrix,
        );
        let qkv = g.f32(l("qkv"), Rows::Tokens, c.qkv_rows());
        g.op(Op::MatMul {
            x: a,
            weight: wqkv,
            out: qkv,
        });
        let (q_norm, k_norm) = if c.use_qk_norm {
            (
                Some(g.weight(
                    format!("{p}.attention.query_layernorm.weight"),
                    vec![c.head_dim],
                    WeightRole::Vector,
                )),
                Some(g.weight(
                    format!("{p}.attention.key_layernorm.weight"),
                    vec![c.head_dim],
                    WeightRole::Vector,
                )),
            )
        } else {
            (None, None)
        };
        g.op(Op::QkNormRope {
            qkv,
            q_norm,
            k_norm,
            heads,
            rot_dim: c.rotary_dim(),
            theta: c.rope_theta,
            eps: c.rms_norm_eps,
        });
        let attn = g.f32(l("attn"), Rows::Tokens, heads.q * heads.dim);
        g.op(Op::Attention {
            qkv,
            layer: i,
            heads,
            out: attn,
        });
        let wo = g.weight(
            format!("{p}.attention.dense.weight"),
            vec![h, heads.q * heads.dim],
            WeightRole::Matrix,
        );
        let o = g.f32(l("attn_out"), Rows::Tokens, h);
        g.op(Op::MatMul {
            x: attn,
            weight: wo,
            out: o,
        });
        // The residual add and the feed-forward block's norm, in one op.
        let x_mid = g.f32(l("resid_mid"), Rows::Tokens, h);
        let ln2 = g.weight(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            WeightRole::Vector,
        );
        let f = g.f32(l("ffn_norm"), Rows::Tokens, h);
        g.op(Op::AddRmsNorm {
            a: x,
            b: o,
            weight: ln2,
            sum: x_mid,
            out: f,
            eps: c.rms_norm_eps,
        });
        let y = if c.is_moe_layer(i) {
            moe_block(&mut g, c, &p, &l, f)
        } else {
            swiglu(
                &mut g,
                &format!("{p}.mlp"),
                &l("dense"),
                f,
                h,
                c.intermediate_size,
            )
        };
        let x_out = g.f32(format!("hidden.{}", i + 1), Rows::Tokens, h);
        if i + 1 < c.num_hidden_layers {
            // Written by the next layer's first op (AddRmsNorm).
            residual = Some((x_mid, y));
            hidden.push(x_out);
        } else {
            g.op(Op::Add {
                a: x_mid,
                b: y,
                out: x_out,
            });
        }
        x = x_out;
    }

    // Only the rows whose predictions are wanted go through the head.
    let tail = g.f32("tail", Rows::Out, h);
    g.op(Op::TakeLastRows { x, out: tail });
    let norm_w = g.weight("model.norm.weight", vec![h], WeightRole::Vector);
    let normed = g.f32("final_norm", Rows::Out, h);
    g.op(Op::RmsNorm {
        x: tail,
        weight: norm_w,
        out: normed,
        eps: c.rms_norm_eps,
    });
    hidden.push(normed);
    let head_name = if c.tie_word_embeddings {
        "model.word_embeddings.weight"
    } else {
        "lm_head.weight"
    };
    let head = g.weight(head_name, vec![c.vocab_size, h], WeightRole::Matrix);
    let logits = g.f32("logits", Rows::Out, c.vocab_size);
    g.op(Op::MatMul {
        x: normed,
        weight: head,
        out: logits,
    });
    let samples = g.buffer(
        "samples",
        Rows::Out,
        crate::backend::SAMPLE_WORDS,
        Elem::U32,
    );
    g.op(Op::Sample {
        logits,
        out: samples,
    });

    Graph {
        buffers: g.buffers,
        weights: g.weights,
        ops: g.ops,
        input_ids,
        logits,
        samples,
        hidden,
        num_layers: c.num_hidden_layers,
    }
}

/// Routed experts plus the shared expert.
fn moe_block(
    g: &mut GraphBuilder,
    c: &Config,
    p: &str,
    l: &dyn Fn(&str) -> String,
    f: crate::graph::BufId,
) -> crate::graph::BufId {
    let h = c.hidden_size;
    let e = c.num_experts;
    let router = g.weight(
        format!("{p}.mlp.gate.weight"),
        vec![e, h],
        WeightRole::Router,
    );
    let logits = g.f32(l("router_logits"), Rows::Tokens, e);
    g.op(Op::MatMul {
        x: f,
        weight: router,
        out: logits,
    });
    let bias = c.expert_bias.then(|| {
        g.weight(
            format!("{p}.mlp.gate.expert_bias"),
            vec![e],
            WeightRole::Vector,
        )
    });
    let k = c.num_experts_per_tok;
    let ids = g.buffer(l("expert_ids"), Rows::Tokens, k, Elem::U32);
    let weights = g.f32(l("expert_weights"), Rows::Tokens, k);
    g.op(Op::MoeRoute {
        logits,
        bias,
        routing: Routing {
            num_experts: e,
            top_k: k,
            n_group: c.n_group,
            topk_group: c.topk_group,
            scaling: c.routed_scaling_factor,
            block: c.block_routing().then_some(BlockRouting {
                size: c.block_size,
                capacity: c.expert_capacity,
            }),
        },
        ids,
        weights,
    });
    let m = c.moe_intermediate_size;
    let mut experts = ExpertSet {
        gate: vec![],
        up: vec![],
        down: vec![],
    };
    for j in 0..e {
        let ep = format!("{p}.mlp.experts.{j}");
        experts.gate.push(g.weight(
            format!("{ep}.gate_proj.weight"),
            vec![m, h],
            WeightRole::Matrix,
        ));
        experts.up.push(g.weight(
            format!("{ep}.up_proj.weight"),
            vec![m, h],
            WeightRole::Matrix,
        ));
        experts.down.push(g.weight(
            format!("{ep}.down_proj.weight"),
            vec![h, m],
            WeightRole::Matrix,
        ));
    }
    let routed = g.f32(l("moe_routed"), Rows::Tokens, h);
    g.op(Op::MoeExperts {
        x: f,
        ids,
        weights,
        experts,
        out: routed,
    });
    if c.num_shared_experts == 0 {
        return routed;
    }
    let shared = swiglu(
        g,
        &format!("{p}.mlp.shared_experts"),
        &l("shared"),
        f,
        h,
        c.shared_intermediate(),
    );
    let y = g.f32(l("moe_out"), Rows::Tokens, h);
    g.op(Op::Add {
        a: routed,
        b: shared,
        out: y,
    });
    y
}

/// `down(silu(gate(x)) * up(x))` from `{prefix}.{gate,up,down}_proj.weight`.
fn swiglu(
    g: &mut GraphBuilder,
    prefix: &str,
    tag: &str,
    x: crate::graph::BufId,
    h: usize,
    inter: usize,
) -> crate::graph::BufId {
    let wg = g.weight(
        format!("{prefix}.gate_proj.weight"),
        vec![inter, h],
        WeightRole::Matrix,
    );
    let wu = g.weight(
        format!("{prefix}.up_proj.weight"),
        vec![inter, h],
        WeightRole::Matrix,
    );
    let wd = g.weight(
        format!("{prefix}.down_proj.weight"),
        vec![h, inter],
        WeightRole::Matrix,
    );
    let gate = g.f32(format!("{tag}.gate"), Rows::Tokens, inter);
    let up = g.f32(format!("{tag}.up"), Rows::Tokens, inter);
    let act = g.f32(format!("{tag}.act"), Rows::Tokens, inter);
    let out = g.f32(format!("{tag}.out"), Rows::Tokens, h);
    g.op(Op::MatMul {
        x,
        weight: wg,
        out: gate,
    });
    g.op(Op::MatMul {
        x,
        weight: wu,
        out: up,
    });
    g.op(Op::SwiGlu { gate, up, out: act });
    g.op(Op::MatMul {
        x: act,
        weight: wd,
        out,
    });
    out
}
