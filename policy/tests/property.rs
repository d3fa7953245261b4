//! Property tests: on generated worlds (namespaces, pods with labels, named ports and IPs,
//! Services and EndpointSlices, NetworkPolicies, FlowPolicies and ClusterNetworkPolicies of both
//! tiers), the verdict
//! read off the compiled per-identity entries the way the datapath reads them equals the naive
//! evaluator's, side by side with the decisive rule's cookie; and applying generated changes
//! incrementally yields exactly the full recompile, through minimal diffs. Worlds and changes
//! are proptest strategies (`common::world`), so a failure shrinks to a small world.

mod common;

use proptest::prelude::*;
use septum_policy::allocation::InMemoryAllocations;
use septum_policy::compile::Engine;
use septum_policy::state::StateDiff;

use common::world::{steps, world};

proptest! {
    // 256 worlds per run; `PROPTEST_CASES=N` runs more (a deeper search before a release).
    #![proptest_config(ProptestConfig::with_cases(common::proptest_cases()))]

    #[test]
    fn compiled_entries_agree_with_the_naive_evaluator(c in world()) {
        let engine = Engine::new(c.clone(), InMemoryAllocations::new());
        if let Err(e) = common::check_world(&c, engine.state(), engine.store()) {
            prop_assert!(false, "{e}\nstate:\n{}", engine.state());
        }
    }

    #[test]
    fn incremental_diffs_equal_full_recompiles(c in world(), steps in steps()) {
        let mut engine = Engine::new(c, InMemoryAllocations::new());
        for (i, step) in steps.iter().enumerate() {
            let ch = step.resolve(engine.cluster(), i);
            let before = engine.state().clone();
            let diff = engine.apply(&ch);
            let full = engine.full_recompile();
            prop_assert!(
                engine.state() == &full,
                "step {i}: incremental state differs from full recompile after {ch:?}\nincremental:\n{}\nfull:\n{}",
                engine.state(),
                full
            );
            let mut replay = before.clone();
            diff.apply_to(&mut replay);
            prop_assert_eq!(&replay, engine.state(), "step {}: old state + diff != new state", i);
            prop_assert_eq!(
                diff,
                StateDiff::between(&before, &full),
                "step {}: diff is not minimal for {:?}",
                i,
                ch
            );
        }
        if let Err(e) = common::check_world(engine.cluster(), engine.state(), engine.store()) {
            prop_assert!(false, "after {} changes: {e}", steps.len());
        }
    }
}
