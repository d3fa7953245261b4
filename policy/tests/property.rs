//! Property tests: on random worlds (namespaces, pods with labels, named ports and IPs, Services,
//! NetworkPolicies, FlowPolicies and ClusterNetworkPolicies of both tiers), the verdict read off
//! the compiled per-identity entries the way the datapath reads them equals the naive
//! evaluator's, side by side with the decisive rule's cookie; and applying random changes
//! incrementally yields exactly the full recompile, through minimal diffs.

mod common;

use proptest::prelude::*;
use septum_policy::allocation::InMemoryAllocations;
use septum_policy::compile::Engine;
use septum_policy::state::StateDiff;

use common::world::{Rng, change, world};

proptest! {
    // 256 worlds per run; `PROPTEST_CASES=N` runs more (a deeper search before a release).
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn compiled_entries_agree_with_the_naive_evaluator(seed in any::<u64>()) {
        let c = world(seed);
        let engine = Engine::new(c.clone(), InMemoryAllocations::new());
        if let Err(e) = common::check_world(&c, engine.state(), engine.store()) {
            panic!("seed {seed}: {e}\nworld: {c:#?}\nstate:\n{}", engine.state());
        }
    }

    #[test]
    fn incremental_diffs_equal_full_recompiles(seed in any::<u64>()) {
        let c = world(seed);
        let mut rng = Rng::new(seed ^ 0x5eed);
        let mut engine = Engine::new(c, InMemoryAllocations::new());
        for i in 0..16 {
            let ch = change(&mut rng, engine.cluster(), i);
            let before = engine.state().clone();
            let diff = engine.apply(&ch);
            let full = engine.full_recompile();
            if engine.state() != &full {
                panic!("seed {seed} step {i}: incremental state differs from full recompile after {ch:?}\nincremental:\n{}\nfull:\n{}", engine.state(), full);
            }
            let mut replay = before.clone();
            diff.apply_to(&mut replay);
            assert_eq!(&replay, engine.state(), "seed {seed} step {i}: old state + diff != new state");
            assert_eq!(diff, StateDiff::between(&before, &full), "seed {seed} step {i}: diff is not minimal for {ch:?}");
        }
        if let Err(e) = common::check_world(engine.cluster(), engine.state(), engine.store()) {
            panic!("seed {seed} after changes: {e}");
        }
    }
}
