//! A sequence's tokens do not depend on what it is batched with: every golden case of every
//! golden model (every decoder, block length and parameter set the files hold, plus seeded
//! variants), decoded alone and then in continuous batches where sequences join and leave
//! between steps, with and without its prefill cut into chunks, gives the same tokens and
//! forward count. Run on every backend that holds several KV-cache slots: reference, cpu,
//! wgpu (where an adapter exists) and cuda (where a GPU does, or on its CPU emulator with
//! `UNMASK_CUDA_EMULATOR=1`), the device backends also with
//! passes short enough that batches split into several passes and long prompts into chunks.

use unmask_core::decode::{generate_batch, BatchRequest, DecodeParams};
use unmask_core::reference::Kernels;
use unmask_core::{generate, Backend, Model, ReferenceBackend};
use unmask_tests::{
    backend_wanted, cuda_or_skip, generate_goldens, golden_models, wgpu_or_skip, wgpu_with,
};

fn backend(model: &Model, kernels: Kernels, slots: usize) -> ReferenceBackend {
    ReferenceBackend::with_kernels(model.graph.clone(), &model.weights, kernels, &mut |_, _| {})
        .unwrap()
        .with_slots(slots)
}

/// A backend of `model` with `slots` KV-cache slots.
type Make = Box<dyn Fn(&Model, usize) -> Box<dyn Backend>>;
/// A backend of a model it holds, with `slots` KV-cache slots.
type MakeSlots<'a> = Box<dyn Fn(usize) -> Box<dyn Backend> + 'a>;

/// A backend to batch on, the (width, prefill chunk) runs to compare with decoding alone, and
/// which cases: all, or (on lavapipe, about 20x slower than cpu) every `stride`-th and the long
/// prompt.
struct Batching {
    name: String,
    make: Make,
    runs: &'static [(usize, usize)],
    stride: usize,
}

fn batching_backends() -> Vec<Batching> {
    // Widths 2 and 4, and 4 with every prompt's prefill cut into one-block chunks.
    const ALL: &[(usize, usize)] = &[(2, 0), (4, 0), (4, 1)];
    let mut v: Vec<Batching> = vec![
        Batching {
            name: "reference".into(),
            make: Box::new(|m, slots| Box::new(backend(m, Kernels::Reference, slots))),
            runs: ALL,
            stride: 1,
        },
        Batching {
            name: "cpu".into(),
            make: Box::new(|m, slots| Box::new(backend(m, Kernels::Fast, slots))),
            runs: ALL,
            stride: 1,
        },
    ];
    v.retain(|b| backend_wanted(&b.name));
    if wgpu_or_skip() {
        // Passes of 72 tokens: two 32-token windows share one, three do not, and long prompts
        // are chunked; a row's kernels are the ones it takes alone (passes::plan).
        v.push(Batching {
            name: "wgpu".into(),
            make: Box::new(|m, slots| Box::new(wgpu(m, slots, 72))),
            runs: &[(3, 0), (4, 1)],
            stride: 5,
        });
    }
    if cuda_or_skip() {
        // On the CPU emulator (UNMASK_CUDA_EMULATOR=1), the cases and runs of lavapipe: every
        // case alone and in three batch runs had not finished after 25 minutes here.
        let emulated = unmask_cuda::emulator::enabled();
        v.push(Batching {
            name: "cuda".into(),
            make: Box::new(|m, slots| Box::new(cuda(m, slots, 72))),
            runs: if emulated { &[(3, 0), (4, 1)] } else { ALL },
            stride: if emulated { 5 } else { 1 },
        });
    }
    v
}

/// The device backends with `slots` KV-cache slots and passes of at most `max_tokens` rows.
fn wgpu(model: &Model, slots: usize, max_tokens: usize) -> unmask_wgpu::WgpuBackend {
    let opts = unmask_wgpu::WgpuOptions {
        slots,
        max_tokens,
        ..Default::default()
    };
    wgpu_with(model, &opts).unwrap()
}

fn cuda(model: &Model, slots: usize, max_tokens: usize) -> unmask_cuda::CudaBackend {
    let opts = unmask_cuda::CudaOptions {
        slots,
        max_tokens,
        max_positions: model.config.max_position_embeddings,
        ..Default::default()
    };
    unmask_cuda::CudaBackend::new(model.graph.clone(), &model.weights, opts, &mut |_, _| {})
        .unwrap()
}

/// Every case of every golden file of `dir`, greedy as written, and a seeded variant of each
/// decoder that samples.
fn cases(model: &Model, dir: &std::path::Path) -> Vec<(String, Vec<u32>, DecodeParams)> {
    let (detected, _) = unmask_core::decode::family::detect(dir, &model.config);
    let mut v = Vec::new();
    for (path, golden) in generate_goldens(dir) {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        for (i, case) in golden.cases.iter().enumerate() {
            let decoder = case.decoder.or(golden.decoder).unwrap_or(detected);
            let p = case.params(decoder);
            v.push((
                format!("{file}: {}", case.name),
                case.prompt_ids.clone(),
                p.clone(),
            ));
            if p.validate().is_ok() && decoder != unmask_core::decode::Decoder::Llada22 {
                let mut seeded = p;
                seeded.temperature = 0.8;
                seeded.top_k = 20;
                seeded.seed = 1000 + i as u64;
                v.push((
                    format!("{file}: {} seeded", case.name),
                    case.prompt_ids.clone(),
                    seeded,
                ));
            }
        }
    }
    // A prompt of several blocks, so that chunked prefills have chunks to cut.
    if let Some((name, prompt, p)) = v.first().cloned() {
        let long: Vec<u32> = prompt
            .iter()
            .cycle()
            .take(6 * p.block_length + 3)
            .copied()
            .collect();
        v.push((format!("{name} (long prompt)"), long, p));
    }
    v
}

#[test]
fn a_sequence_decodes_the_same_alone_and_in_any_batch() {
    for dir in golden_models() {
        let model = Model::open(&dir).unwrap();
        let ids = model.special_ids();
        let limit = model.config.max_position_embeddings;
        let cases = cases(&model, &dir);
        assert!(
            cases.len() >= 2,
            "{}: too few cases to batch",
            dir.display()
        );
        for Batching {
            name,
            make,
            runs,
            stride,
        } in batching_backends()
        {
            let last = cases.len() - 1;
            let cases: Vec<_> = cases
                .iter()
                .enumerate()
                .filter(|(i, _)| i % stride == 0 || *i == last)
                .map(|(_, c)| c.clone())
                .collect();
            let mut alone = make(&model, 1);
            let want: Vec<_> = cases
                .iter()
                .map(|(_, prompt, p)| {
                    generate(alone.as_mut(), &ids, limit, prompt, p, &mut |_| true)
                        .map_err(|e| e.to_string())
                })
                .collect();
            // Sequences join at staggered steps, so batches form and change as others finish.
            for &(width, prefill_chunk) in runs {
                let requests: Vec<BatchRequest> = cases
                    .iter()
                    .enumerate()
                    .map(|(i, (_, prompt, p))| BatchRequest {
                        prompt,
                        params: p.clone(),
                        join_after: (i * 3) % 7,
                        prefill_chunk,
                    })
                    .collect();
                let mut batched = make(&model, width);
                let run = generate_batch(batched.as_mut(), &ids, limit, &requests, width).unwrap();
                assert_eq!(
                    run.prefill_chunks > 0,
                    prefill_chunk > 0,
                    "{name}: width {width}: {} prefill chunks",
                    run.prefill_chunks
                );
                assert!(
                    run.batch_sizes.iter().any(|&n| n > 1),
                    "{name}: width {width}: no batch of more than one ({:?})",
                    run.batch_sizes
                );
                assert!(run.batch_sizes.iter().all(|&n| n <= width));
                for ((case, w), g) in cases.iter().zip(&want).zip(run.generations) {
                    let what = format!(
                        "{}: {name}: width {width}, prefill chunk {prefill_chunk}: {}",
                        dir.display(),
                        case.0
                    );
                    match (w, g.map_err(|e| e.to_string())) {
                        (Ok(w), Ok(g)) => {
                            assert_eq!(g.tokens, w.tokens, "{what}: tokens");
                            assert_eq!(g.forwards, w.forwards, "{what}: forwards");
                        }
                        (Err(w), Err(g)) => assert_eq!(&g, w, "{what}"),
                        (w, g) => panic!("{what}: alone {w:?}, batched {g:?}"),
                    }
                }
            }
        }
    }
}

#[test]
fn a_batch_checks_its_slots() {
    let dir = golden_models().remove(0);
    let model = Model::open(&dir).unwrap();
    let mut b = backend(&model, Kernels::Fast, 2);
    let tokens = [1u32, 2, 3];
    let step = |slot| unmask_core::backend::SlotStep {
        slot,
        step: unmask_core::Step {
            tokens: &tokens,
            start: 0,
            keep: 3,
            block_length: 4,
            out_rows: 3,
            sampling: unmask_core::SampleParams::greedy(0, 4),
            capture: unmask_core::Capture::Samples,
        },
    };
    let e = b.step_batch(&[step(0), step(0)]).unwrap_err().to_string();
    assert!(e.contains("share KV-cache slot 0"), "{e}");
    let e = b.step_batch(&[step(2)]).unwrap_err().to_string();
    assert!(e.contains("slot 2"), "{e}");
    assert!(b.step_batch(&[]).is_err());
    let outs = b.step_batch(&[step(0), step(1)]).unwrap();
    assert_eq!(outs.len(), 2);
    assert_eq!(outs[0].samples, outs[1].samples, "one window, two slots");
    assert_eq!((b.cached_in(0), b.cached_in(1)), (3, 3));
    b.reset_slot(1);
    assert_eq!((b.cached_in(0), b.cached_in(1)), (3, 0));
}

#[test]
fn a_chunked_prefill_hands_out_whole_chunks_then_the_first_window() {
    let dir = golden_models().remove(0);
    let model = Model::open(&dir).unwrap();
    let ids = model.special_ids();
    let limit = model.config.max_position_embeddings;
    let p = DecodeParams {
        block_length: 8,
        gen_length: 8,
        ..Default::default()
    };
    let prompt: Vec<u32> = (0..45).map(|i| 10 + i % 50).collect();
    let mut d = unmask_core::decode::Decoding::new(&ids, limit, &prompt, &p).unwrap();
    // 10 positions round up to 16; the window is the block at 40 (the prompt ends at 45).
    d.chunk_prefill(10).unwrap();
    let mut b = backend(&model, Kernels::Fast, 1);
    let mut chunks = Vec::new();
    loop {
        let step = d.next_step().unwrap();
        let (start, len, out_rows) = (step.start, step.tokens.len(), step.out_rows);
        let out = b.step(&step).unwrap();
        if !d.pending_prefill() {
            assert_eq!(
                (start, len, out_rows),
                (32, 16, 8),
                "the first window's step"
            );
            let e = d.apply_prefill(&out, "test").unwrap_err().to_string();
            assert!(e.contains("without a prefill chunk"), "{e}");
            d.apply(&out, "test").unwrap();
            break;
        }
        assert!(
            d.apply(&out, "test").is_err(),
            "a chunk's output is not a window's"
        );
        d.apply_prefill(&out, "test").unwrap();
        chunks.push((start, len, out_rows));
    }
    assert_eq!(chunks, [(0, 16, 1), (16, 16, 1)]);
    assert!(d.chunk_prefill(16).is_err(), "after a forward");
    // A chunk as long as a flag can say is one context, not an overflow.
    let mut d = unmask_core::decode::Decoding::new(&ids, limit, &prompt, &p).unwrap();
    d.chunk_prefill(usize::MAX).unwrap();
    let step = d.next_step().unwrap();
    assert_eq!(
        (step.start, step.tokens.len()),
        (0, 48),
        "one forward, prompt and window"
    );
}

/// wgpu and cuda: when a slot's sequence outgrows the KV cache, the new buffers keep every
/// slot's positions (wgpu copies each slot's region to its new place; cuda grows the slot
/// alone, from its first 256 positions): the grown sequence and one resumed after it grew
/// sample as they do alone, the latter also in one forward with the long one.
#[test]
fn a_growing_kv_cache_keeps_the_other_slots() {
    let model = Model::open(&golden_models().remove(0)).unwrap();
    let mut makers: Vec<(&str, MakeSlots)> = Vec::new();
    if wgpu_or_skip() {
        makers.push(("wgpu", Box::new(|slots| Box::new(wgpu(&model, slots, 64)))));
    }
    if cuda_or_skip() {
        makers.push(("cuda", Box::new(|slots| Box::new(cuda(&model, slots, 64)))));
    }
    let ids = model.special_ids();
    let vocab = ids.valid_vocab.min(model.graph.token_rows() as u32);
    let tokens: Vec<u32> = (0..704u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let step = |from: usize, to: usize| unmask_core::Step {
        tokens: &tokens[from..to],
        start: from,
        keep: to - from,
        block_length: 32,
        out_rows: 32.min(to - from),
        sampling: unmask_core::SampleParams::greedy(ids.mask, ids.valid_vocab),
        capture: unmask_core::Capture::Samples,
    };
    let slot = |slot, step| unmask_core::backend::SlotStep { slot, step };
    // 640 positions in steps of at most 512 (the second one grows the cache), then a window.
    let grow = |b: &mut dyn Backend, slot_id: usize| {
        for (from, to) in [(0, 512), (512, 640)] {
            b.step_batch(&[slot(slot_id, step(from, to))]).unwrap();
        }
        b.step_batch(&[slot(slot_id, step(640, 672))]).unwrap()
    };
    for (name, make) in &makers {
        // Alone: 64 positions, then the next block; and the long sequence.
        let mut alone = make(1);
        alone.step(&step(0, 64)).unwrap();
        let want = alone.step(&step(64, 96)).unwrap();
        let want_long = grow(&mut *make(1), 0);
        // Slot 0 holds 64 positions while the sequence in slot 1 grows the cache.
        let mut b = make(2);
        b.step_batch(&[slot(0, step(0, 64))]).unwrap();
        let before = b.device_memory().unwrap();
        let got_long = grow(&mut *b, 1);
        assert!(
            b.device_memory().unwrap() > before,
            "{name}: the cache did not grow"
        );
        assert_eq!(
            got_long[0].samples, want_long[0].samples,
            "{name}: the grown slot"
        );
        assert_eq!(b.cached_in(0), 64);
        // In one forward with the long sequence's next window: on wgpu that pass is past 512
        // positions and takes split-KV, where the short sequence is one key range.
        let got = b
            .step_batch(&[slot(0, step(64, 96)), slot(1, step(672, 704))])
            .unwrap();
        assert_eq!(got[0].samples, want.samples, "{name}: the slot beside it");
    }
}

/// wgpu's split-KV (rows past 512 keys) reads a block of a sequence's rows per workgroup on
/// hardware adapters and one row on software ones (`WgpuOptions::split_row_blocks`): a row's
/// logits are the same bits either way, also where a workgroup's rows see different keys
/// (prompt chunks of block length 6 cut in 4-row blocks) and in a batch beside a short sequence.
#[test]
fn split_kv_in_row_blocks_gives_the_bits_of_single_rows() {
    if !wgpu_or_skip() {
        return;
    }
    let model = Model::open(&golden_models().remove(0)).unwrap();
    let ids = model.special_ids();
    let vocab = ids.valid_vocab.min(model.graph.token_rows() as u32);
    let tokens: Vec<u32> = (0..700u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let step = |from: usize, to: usize, block_length: usize| unmask_core::Step {
        tokens: &tokens[from..to],
        start: from,
        keep: to - from,
        block_length,
        out_rows: 32.min(to - from),
        sampling: unmask_core::SampleParams::greedy(ids.mask, ids.valid_vocab),
        capture: unmask_core::Capture::Samples,
    };
    let slot = |slot, step| unmask_core::backend::SlotStep { slot, step };
    let run = |row_blocks: bool| {
        let opts = unmask_wgpu::WgpuOptions {
            slots: 2,
            max_tokens: 64,
            split_row_blocks: Some(row_blocks),
            ..Default::default()
        };
        let mut b = wgpu_with(&model, &opts).unwrap();
        let mut sampled = |steps: &[unmask_core::backend::SlotStep]| {
            let out = b.step_batch(steps).unwrap();
            out.into_iter().map(|o| o.samples).collect::<Vec<_>>()
        };
        sampled(&[slot(0, step(0, 40, 32))]);
        let chunks = sampled(&[slot(1, step(0, 600, 6))]);
        let batched = sampled(&[slot(0, step(40, 72, 32)), slot(1, step(600, 632, 32))]);
        // Logits are captured from a step of one sequence.
        let mut last = step(632, 664, 32);
        last.capture = unmask_core::Capture::Logits;
        let logits = b.step_batch(&[slot(1, last)]).unwrap()[0]
            .logits
            .clone()
            .unwrap();
        let bits: Vec<u32> = logits.iter().map(|x| x.to_bits()).collect();
        (chunks, batched, bits)
    };
    let (blocks, rows) = (run(true), run(false));
    assert!(!blocks.2.is_empty());
    assert!(
        blocks.0 == rows.0,
        "split-KV in row blocks changed the chunked prompt's samples"
    );
    assert!(
        blocks.1 == rows.1,
        "split-KV in row blocks changed the batch's samples"
    );
    assert!(
        blocks.2 == rows.2,
        "split-KV in row blocks changed the logits"
    );
}

/// A slot count from a caller is bounded before anything is allocated for it.
#[test]
fn the_device_backends_refuse_absurd_slot_counts() {
    let model = Model::open(&golden_models().remove(0)).unwrap();
    let opts = unmask_wgpu::WgpuOptions {
        slots: usize::MAX,
        ..Default::default()
    };
    let e = wgpu_with(&model, &opts)
        .err()
        .expect("an error")
        .to_string();
    assert!(e.contains("KV-cache slots"), "{e}");
    // cuda refuses them before it looks for a device, so this runs without one too.
    for slots in [0, usize::MAX] {
        let opts = unmask_cuda::CudaOptions {
            slots,
            ..Default::default()
        };
        let e = unmask_cuda::CudaBackend::new(
            model.graph.clone(),
            &model.weights,
            opts,
            &mut |_, _| {},
        )
        .err()
        .expect("an error")
        .to_string();
        assert!(e.contains("KV-cache slots"), "{slots}: {e}");
    }
}
