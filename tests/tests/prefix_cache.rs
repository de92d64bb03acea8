//! A generation that starts from the K/V the last one left in the backend's cache (a chat's
//! next turn: the history plus a new message) is token for token the fresh one, on every
//! backend and every decoder of the golden models; a different block length reuses nothing.

use unmask_core::decode::{generate_reusing, DecodeParams, Generation, KvPrefix};
use unmask_core::{generate, Backend, Model, Result, SpecialIds};
use unmask_tests::{backends, generate_goldens, golden_models};

/// The next turn's prompt: the last prompt, its answer (special ids left out, as a chat
/// template re-renders the text), then the first prompt's tokens again as the new message.
fn next_turn(ids: &SpecialIds, prompt: &[u32], answer: &[u32]) -> Vec<u32> {
    let special = [
        Some(ids.eos),
        Some(ids.mask),
        ids.eos_alt,
        ids.delete,
        ids.split,
    ];
    let mut next = prompt.to_vec();
    next.extend(answer.iter().filter(|t| !special.contains(&Some(**t))));
    next.extend_from_slice(&prompt[..prompt.len().min(7)]);
    next
}

/// One generation of `model` from `cache`, to the end.
fn turn(
    model: &Model,
    backend: &mut dyn Backend,
    cache: &mut KvPrefix,
    prompt: &[u32],
    p: &DecodeParams,
) -> Result<Generation> {
    let limit = model.config.max_position_embeddings;
    generate_reusing(
        backend,
        cache,
        &model.special_ids(),
        limit,
        prompt,
        p,
        &mut |_| true,
    )
}

#[test]
fn the_next_turn_from_the_cache_is_the_fresh_one() {
    for dir in golden_models() {
        let model = Model::open(&dir).unwrap();
        let ids = model.special_ids();
        let (detected, _) = unmask_core::decode::family::detect(&dir, &model.config);
        let limit = model.config.max_position_embeddings;
        for (path, golden) in generate_goldens(&dir) {
            let file = path.file_name().unwrap().to_string_lossy().to_string();
            // Two cases a file: enough to cross decoders and block lengths, few enough for
            // lavapipe.
            for case in golden.cases.iter().take(2) {
                let decoder = case.decoder.or(golden.decoder).unwrap_or(detected);
                let p = case.params(decoder);
                if !p.use_cache {
                    continue;
                }
                for be in backends() {
                    let what = format!("{}: {file}: {} ({decoder})", be.name, case.name);
                    let mut backend = (be.make)(&model).unwrap();
                    let mut cache = KvPrefix::default();
                    let first = turn(&model, backend.as_mut(), &mut cache, &case.prompt_ids, &p)
                        .unwrap_or_else(|e| panic!("{what}: first turn: {e}"));
                    assert_eq!(cache.reused(), 0, "{what}: nothing to reuse at first");
                    let next = next_turn(&ids, &case.prompt_ids, &first.tokens);
                    let want = generate(backend.as_mut(), &ids, limit, &next, &p, &mut |_| true);
                    // The fresh run reset the backend: replay the first turn to refill it.
                    cache.forget();
                    turn(&model, backend.as_mut(), &mut cache, &case.prompt_ids, &p).unwrap();
                    let expect_reuse = cache.reusable(&next, &p);
                    assert!(
                        expect_reuse >= case.prompt_ids.len() / p.block_length * p.block_length,
                        "{what}: the first prompt's whole blocks are reusable ({expect_reuse})"
                    );
                    let got = turn(&model, backend.as_mut(), &mut cache, &next, &p);
                    assert_eq!(cache.reused(), expect_reuse, "{what}");
                    match (want, got) {
                        (Ok(w), Ok(g)) => {
                            assert_eq!(g.tokens, w.tokens, "{what}: tokens");
                            assert_eq!(g.forwards, w.forwards, "{what}: forwards");
                        }
                        // Both runs must agree on a failure too (a 2.2 block that does not
                        // converge); an error of one only is a difference.
                        (Err(w), Err(g)) => assert_eq!(g.to_string(), w.to_string(), "{what}"),
                        (w, g) => panic!("{what}: fresh {w:?}, from the cache {g:?}"),
                    }
                    // Another block length shares no K/V with these.
                    let mut other = p.clone();
                    other.block_length = p.block_length * 2;
                    assert_eq!(cache.reusable(&next, &other), 0, "{what}");
                }
            }
        }
    }
}
