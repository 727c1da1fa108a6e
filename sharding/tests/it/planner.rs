//! The planners: coverage, placement and routing over hand-built and random meshes.
//!
//! All pure: records are built in the test, "now" is a number, and nothing touches the
//! network or a clock, so every case is deterministic and runs in microseconds.

use std::collections::HashSet;
use std::time::Duration;

use lamina_sharding::layers::LayerRange;
use lamina_sharding::planner::{
    check_rebalance, choose_range, plan_route, plan_sub_route, replace_hop, route_cost,
    span_for_budget, Coverage, MeshView, PlanError, Rejection, Route, RouteParams, ServerId,
    ServerRecord,
};
use proptest::prelude::*;

const MODEL: &str = "model-a";
const NOW: u64 = 1_000;

fn lr(start: usize, end: usize) -> LayerRange {
    LayerRange {
        start: start as u32,
        end: end as u32,
    }
}

/// A live record with a free slot and a 1 ms RTT.
fn rec(id: &str, start: usize, end: usize, tokens_per_sec: f64) -> ServerRecord {
    ServerRecord {
        id: ServerId::new(id),
        model: MODEL.into(),
        layers: lr(start, end),
        tokens_per_sec,
        free_slots: 4,
        expires_at_ms: NOW + 10_000,
        rtt: Some(Duration::from_millis(1)),
    }
}

/// A record whose compute costs `secs_per_layer` per layer and whose RTT is `rtt_ms`.
fn rec_spl(id: &str, start: usize, end: usize, secs_per_layer: f64, rtt_ms: u64) -> ServerRecord {
    let tokens_per_sec = 1.0 / (secs_per_layer * (end - start) as f64);
    ServerRecord {
        rtt: Some(Duration::from_millis(rtt_ms)),
        ..rec(id, start, end, tokens_per_sec)
    }
}

fn view(n_layers: usize, records: Vec<ServerRecord>) -> MeshView {
    MeshView::new(MODEL, n_layers, NOW, records)
}

fn none() -> HashSet<ServerId> {
    HashSet::new()
}

fn ids(route: &Route) -> Vec<&str> {
    route.hops.iter().map(|h| h.server.as_str()).collect()
}

fn ranges(route: &Route) -> Vec<LayerRange> {
    route.hops.iter().map(|h| h.layers).collect()
}

// ---------------------------------------------------------------- view and coverage

#[test]
fn view_ignores_expired_foreign_malformed_and_superseded_records() {
    let mut expired = rec("old", 0, 4, 10.0);
    expired.expires_at_ms = NOW; // the expiry instant itself is already too late
    let mut foreign = rec("other", 0, 4, 10.0);
    foreign.model = "model-b".into();
    let too_long = rec("long", 2, 9, 10.0);
    let nan = rec("nan", 0, 4, f64::NAN);
    let zero = rec("zero", 0, 4, 0.0);
    let mut stale = rec("dup", 0, 2, 10.0);
    stale.expires_at_ms = NOW + 5;
    let fresh = rec("dup", 2, 4, 10.0);
    let ok = rec("ok", 0, 8, 10.0);

    let v = view(
        8,
        vec![expired, foreign, too_long, nan, zero, stale, fresh, ok],
    );
    let live: Vec<&str> = v.servers().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(live, vec!["dup", "ok"]);
    assert_eq!(v.get(&"dup".into()).map(|s| s.layers), Some(lr(2, 4)));

    let why = |id: &str| {
        v.rejected()
            .iter()
            .find(|(r, _)| r.as_str() == id)
            .map(|(_, w)| *w)
    };
    assert_eq!(why("old"), Some(Rejection::Expired));
    assert_eq!(why("long"), Some(Rejection::RangeOutOfBounds));
    assert_eq!(why("nan"), Some(Rejection::BadThroughput));
    assert_eq!(why("zero"), Some(Rejection::BadThroughput));
    assert_eq!(why("dup"), Some(Rejection::Superseded));
    assert_eq!(why("other"), None, "other models are simply not ours");
}

#[test]
fn coverage_counts_hosts_and_sums_throughput() {
    let v = view(
        6,
        vec![
            rec("a", 0, 4, 10.0),
            rec("b", 2, 6, 5.0),
            rec("c", 3, 4, 1.0),
        ],
    );
    let c = Coverage::of(&v);
    let hosts: Vec<usize> = c.layers().iter().map(|l| l.servers).collect();
    assert_eq!(hosts, vec![1, 1, 2, 3, 1, 1]);
    assert_eq!(c.throughputs(), vec![10.0, 10.0, 15.0, 16.0, 5.0, 5.0]);
    assert_eq!(c.min_tokens_per_sec(), 5.0);
    assert!(c.is_complete());
    assert!(c.uncovered().is_empty());
    assert_eq!(c.weakest_ranges(), vec![lr(4, 6)]);
    assert_eq!(c.weakest(3), vec![4, 5, 0]);
}

#[test]
fn coverage_names_uncovered_ranges() {
    let v = view(30, vec![rec("a", 0, 12, 10.0), rec("b", 18, 28, 10.0)]);
    let c = Coverage::of(&v);
    assert_eq!(c.uncovered(), vec![lr(12, 18), lr(28, 30)]);
    assert!(!c.is_complete());
    assert_eq!(c.min_tokens_per_sec(), 0.0);
    assert_eq!(c.weakest_ranges(), vec![lr(12, 18), lr(28, 30)]);
}

#[test]
fn full_servers_still_count_as_coverage() {
    let mut full = rec("a", 0, 4, 10.0);
    full.free_slots = 0;
    let c = Coverage::of(&view(4, vec![full]));
    assert!(c.is_complete());
}

// ---------------------------------------------------------------- placement

#[test]
fn span_for_budget_caps_at_the_model_and_refuses_tiny_budgets() {
    assert_eq!(span_for_budget(800, 100, 30), Ok(8));
    assert_eq!(span_for_budget(850, 100, 30), Ok(8));
    assert_eq!(span_for_budget(1 << 40, 100, 30), Ok(30));
    assert_eq!(span_for_budget(800, 0, 30), Ok(30));
    assert!(matches!(
        span_for_budget(99, 100, 30),
        Err(PlanError::BudgetTooSmall { .. })
    ));
    assert!(matches!(
        span_for_budget(800, 100, 0),
        Err(PlanError::BadRange { .. })
    ));
}

#[test]
fn empty_mesh_places_at_layer_zero() {
    let c = Coverage::of(&view(30, vec![]));
    let p = choose_range(&c, 8, 10.0).unwrap();
    assert_eq!(p.range, lr(0, 8));
    assert_eq!(p.uncovered_after, 22);
    assert_eq!(choose_range(&c, 99, 10.0).unwrap().range, lr(0, 30));
}

#[test]
fn placement_fills_the_emptiest_region_first() {
    // Layers 0..6 and 14..16 are served; 6..14 is the largest gap.
    let v = view(20, vec![rec("a", 0, 6, 10.0), rec("b", 14, 16, 10.0)]);
    let p = choose_range(&Coverage::of(&v), 6, 10.0).unwrap();
    assert!(
        p.range.start >= 6 && p.range.end <= 14,
        "{} should sit inside the gap 6..14",
        p.range
    );
    assert_eq!(p.uncovered_after, 20 - 8 - 6);
}

#[test]
fn four_nodes_of_eight_layers_cover_thirty_layers() {
    let span = span_for_budget(8 * 1_000_000 + 123, 1_000_000, 30).unwrap();
    assert_eq!(span, 8);
    let mut records = Vec::new();
    for node in 0..4 {
        let id = format!("n{node}");
        let others = view(30, records.clone()).without(&ServerId::new(&id));
        let p = choose_range(&Coverage::of(&others), span, 20.0).unwrap();
        records.push(rec(&id, p.range.start as usize, p.range.end as usize, 20.0));
    }
    let placed: Vec<LayerRange> = records.iter().map(|r| r.layers).collect();
    assert_eq!(placed, vec![lr(0, 8), lr(8, 16), lr(16, 24), lr(22, 30)]);
    let c = Coverage::of(&view(30, records));
    assert!(c.is_complete(), "uncovered: {:?}", c.uncovered());
}

#[test]
fn heterogeneous_mesh_places_on_the_weakest_region() {
    // Fully covered, but 10..14 is served only by a slow node.
    let v = view(
        20,
        vec![
            rec("fast1", 0, 10, 50.0),
            rec("slow", 10, 14, 2.0),
            rec("fast2", 14, 20, 50.0),
        ],
    );
    let p = choose_range(&Coverage::of(&v), 4, 10.0).unwrap();
    assert_eq!(p.range, lr(10, 14));
    assert_eq!(p.min_tokens_per_sec, 12.0);
}

#[test]
fn placement_rejects_bad_own_throughput() {
    let c = Coverage::of(&view(4, vec![]));
    assert!(matches!(
        choose_range(&c, 2, f64::NAN),
        Err(PlanError::BadThroughput(_))
    ));
    assert!(matches!(
        choose_range(&c, 2, 0.0),
        Err(PlanError::BadThroughput(_))
    ));
    assert!(matches!(
        choose_range(&c, 0, 1.0),
        Err(PlanError::BadRange { .. })
    ));
}

#[test]
fn rebalance_moves_only_above_the_margin() {
    // Without me: 0..10 at 20 tokens/s, 10..20 at 10. I (3 tokens/s) sit on 0..10, so the
    // minimum is 10; on 10..20 it would be 13, a gain of 30%.
    let me = ServerId::new("me");
    let v = view(
        20,
        vec![
            rec("a", 0, 20, 10.0),
            rec("b", 0, 10, 10.0),
            rec("me", 0, 10, 3.0),
        ],
    );
    let others = Coverage::of(&v.without(&me));

    let r = check_rebalance(&others, lr(0, 10), 3.0, 0.2).unwrap();
    assert_eq!(r.current.min_tokens_per_sec, 10.0);
    assert_eq!(r.best.range, lr(10, 20));
    assert_eq!(r.best.min_tokens_per_sec, 13.0);
    assert!(r.should_move);

    let r = check_rebalance(&others, lr(0, 10), 3.0, 0.5).unwrap();
    assert!(!r.should_move, "a 30% gain is under a 50% margin");

    let r = check_rebalance(&others, lr(10, 20), 3.0, 0.0).unwrap();
    assert!(!r.should_move, "already on the best range");
}

#[test]
fn rebalance_always_closes_a_gap() {
    let others = Coverage::of(&view(20, vec![rec("a", 0, 10, 10.0)]));
    let r = check_rebalance(&others, lr(0, 10), 1.0, 100.0).unwrap();
    assert_eq!(r.current.uncovered_after, 10);
    assert_eq!(r.best.range, lr(10, 20));
    assert_eq!(r.best.uncovered_after, 0);
    assert!(r.should_move);
    assert!(matches!(
        check_rebalance(&others, lr(15, 25), 1.0, 0.1),
        Err(PlanError::BadRange { .. })
    ));
}

// ---------------------------------------------------------------- routing

#[test]
fn routing_picks_the_fastest_chain() {
    let v = view(
        10,
        vec![
            rec_spl("slow", 0, 10, 0.1, 1),
            rec_spl("b", 0, 5, 0.002, 1),
            rec_spl("c", 5, 10, 0.002, 1),
        ],
    );
    let r = plan_route(&v, &RouteParams::default(), &none()).unwrap();
    assert_eq!(ids(&r), vec!["b", "c"]);
    assert_eq!(ranges(&r), vec![lr(0, 5), lr(5, 10)]);
    assert!((r.est_secs_per_token - (0.02 + 0.002)).abs() < 1e-12);
    assert_eq!(r.range(), Some(lr(0, 10)));
}

#[test]
fn routing_prefers_fewer_hops_at_equal_cost() {
    // One hop or two, both 0.1 s per token with free RTTs.
    let v = view(
        10,
        vec![
            rec_spl("b", 0, 5, 0.01, 0),
            rec_spl("c", 5, 10, 0.01, 0),
            rec_spl("whole", 0, 10, 0.01, 0),
        ],
    );
    let r = plan_route(&v, &RouteParams::default(), &none()).unwrap();
    assert_eq!(ids(&r), vec!["whole"]);

    // Two hops cheaper by less than the epsilon still lose to one hop...
    let v = view(
        10,
        vec![
            rec_spl("b", 0, 5, 0.01 - 1e-8, 0),
            rec_spl("c", 5, 10, 0.01 - 1e-8, 0),
            rec_spl("whole", 0, 10, 0.01, 0),
        ],
    );
    assert_eq!(
        ids(&plan_route(&v, &RouteParams::default(), &none()).unwrap()),
        vec!["whole"]
    );
    // ...and win with a zero epsilon.
    let exact = RouteParams {
        tie_epsilon_secs: 0.0,
        ..RouteParams::default()
    };
    assert_eq!(
        ids(&plan_route(&v, &exact, &none()).unwrap()),
        vec!["b", "c"]
    );
}

#[test]
fn routing_uses_sub_ranges_of_a_server() {
    // "fast" covers 0..12 quickly; only "wide" covers 12..20, so it runs just that part.
    let v = view(
        20,
        vec![
            rec_spl("wide", 0, 20, 0.01, 1),
            rec_spl("fast", 0, 12, 0.001, 1),
        ],
    );
    let r = plan_route(&v, &RouteParams::default(), &none()).unwrap();
    assert_eq!(ids(&r), vec!["fast", "wide"]);
    assert_eq!(ranges(&r), vec![lr(0, 12), lr(12, 20)]);
    assert_eq!(r.hops[1].announced, lr(0, 20));
    assert!((r.hops[1].compute_secs - 0.08).abs() < 1e-12);
}

#[test]
fn routing_skips_full_excluded_and_expired_servers() {
    let mut full = rec_spl("full", 0, 8, 0.001, 1);
    full.free_slots = 0;
    let banned = rec_spl("banned", 0, 8, 0.001, 1);
    let mut expired = rec_spl("expired", 0, 8, 0.001, 1);
    expired.expires_at_ms = NOW - 1;
    let slow = rec_spl("slow", 0, 8, 0.05, 1);
    let v = view(8, vec![full, banned, expired, slow]);
    let exclude: HashSet<ServerId> = [ServerId::new("banned")].into();
    let r = plan_route(&v, &RouteParams::default(), &exclude).unwrap();
    assert_eq!(ids(&r), vec!["slow"]);

    let exclude: HashSet<ServerId> = ["banned", "slow"].map(ServerId::new).into();
    match plan_route(&v, &RouteParams::default(), &exclude) {
        Err(PlanError::Uncovered {
            uncovered,
            full,
            excluded,
            ..
        }) => {
            assert_eq!(uncovered, vec![lr(0, 8)]);
            assert_eq!((full, excluded), (1, 2));
        }
        other => panic!("expected Uncovered, got {other:?}"),
    }
}

#[test]
fn routing_error_names_the_uncovered_layers() {
    let v = view(30, vec![rec("a", 0, 12, 10.0), rec("b", 18, 30, 10.0)]);
    let err = plan_route(&v, &RouteParams::default(), &none()).unwrap_err();
    assert_eq!(
        err,
        PlanError::Uncovered {
            wanted: lr(0, 30),
            uncovered: vec![lr(12, 18)],
            full: 0,
            excluded: 0,
        }
    );
    assert_eq!(
        err.to_string(),
        "layers 12..18 are not served by any live peer"
    );
    let empty = view(4, vec![]);
    let err = plan_route(&empty, &RouteParams::default(), &none()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "layers 0..4 are not served by any live peer"
    );
}

#[test]
fn unknown_rtt_costs_the_default() {
    let mut unknown = rec_spl("unknown", 0, 4, 0.01, 0);
    unknown.rtt = None;
    let measured = rec_spl("measured", 0, 4, 0.01, 10);
    let v = view(4, vec![unknown, measured]);
    let r = plan_route(&v, &RouteParams::default(), &none()).unwrap();
    assert_eq!(ids(&r), vec!["measured"], "50 ms default > 10 ms measured");
    let near = RouteParams {
        default_rtt: Duration::from_millis(2),
        ..RouteParams::default()
    };
    let r = plan_route(&v, &near, &none()).unwrap();
    assert_eq!(ids(&r), vec!["unknown"]);
    assert!((r.hops[0].rtt_secs - 0.002).abs() < 1e-12);
}

#[test]
fn equal_servers_tie_break_on_id_not_input_order() {
    let a = rec_spl("a", 0, 4, 0.01, 1);
    let b = rec_spl("b", 0, 4, 0.01, 1);
    for records in [vec![a.clone(), b.clone()], vec![b, a]] {
        let r = plan_route(&view(4, records), &RouteParams::default(), &none()).unwrap();
        assert_eq!(ids(&r), vec!["a"]);
    }
}

#[test]
fn sub_range_replanning_keeps_the_other_hops() {
    let v = view(
        12,
        vec![
            rec_spl("a", 0, 4, 0.001, 1),
            rec_spl("b", 4, 8, 0.001, 1),
            rec_spl("c", 8, 12, 0.001, 1),
            rec_spl("spare", 2, 10, 0.01, 1),
        ],
    );
    let params = RouteParams::default();
    let route = plan_route(&v, &params, &none()).unwrap();
    assert_eq!(ids(&route), vec!["a", "b", "c"]);

    let fixed = replace_hop(&v, &route, 1, &params, &none()).unwrap();
    assert_eq!(ids(&fixed), vec!["a", "spare", "c"]);
    assert_eq!(ranges(&fixed), ranges(&route));
    assert_eq!(fixed.hops[0], route.hops[0]);
    assert_eq!(fixed.hops[2], route.hops[2]);
    let chain: Vec<(ServerId, LayerRange)> = fixed
        .hops
        .iter()
        .map(|h| (h.server.clone(), h.layers))
        .collect();
    let cost = route_cost(&v, &chain, &params).unwrap();
    assert!((cost - fixed.est_secs_per_token).abs() < 1e-12);

    let part = plan_sub_route(&v, lr(3, 9), &params, &none()).unwrap();
    assert_eq!(part.range(), Some(lr(3, 9)));
    assert_eq!(ids(&part), vec!["a", "b", "c"]);
    assert_eq!(ranges(&part), vec![lr(3, 4), lr(4, 8), lr(8, 9)]);

    // No spare for hop 0's layers 0..2.
    let err = replace_hop(&v, &route, 0, &params, &none()).unwrap_err();
    assert!(
        matches!(err, PlanError::Uncovered { ref uncovered, excluded: 1, .. }
        if uncovered == &vec![lr(0, 2)])
    );
    assert!(matches!(
        replace_hop(&v, &route, 3, &params, &none()),
        Err(PlanError::NoSuchHop { index: 3, len: 3 })
    ));
    assert!(matches!(
        plan_sub_route(&v, lr(5, 13), &params, &none()),
        Err(PlanError::BadRange { .. })
    ));
    assert!(route_cost(&v, &[(ServerId::new("a"), lr(0, 5))], &params).is_none());
}

// ---------------------------------------------------------------- properties

/// One random server: (start seed, length seed, tokens/s, free slots, rtt ms or none,
/// expired, excluded).
type RawServer = (usize, usize, f64, u32, Option<u64>, bool, bool);

fn raw_server() -> impl Strategy<Value = RawServer> {
    (
        0usize..8,
        0usize..8,
        0.5f64..50.0,
        0u32..3,
        proptest::option::of(0u64..20),
        proptest::bool::weighted(0.15),
        proptest::bool::weighted(0.15),
    )
}

/// Records and the exclude set from raw servers, ranges folded into `0..n`.
fn build(n: usize, raw: &[RawServer]) -> (Vec<ServerRecord>, HashSet<ServerId>) {
    let mut records = Vec::new();
    let mut exclude = HashSet::new();
    for (k, &(a, b, tps, slots, rtt, expired, excluded)) in raw.iter().enumerate() {
        let start = a % n;
        let end = start + 1 + b % (n - start);
        let id = format!("s{k}");
        records.push(ServerRecord {
            free_slots: slots,
            expires_at_ms: if expired { NOW } else { NOW + 1 },
            rtt: rtt.map(Duration::from_millis),
            ..rec(&id, start, end, tps)
        });
        if excluded {
            exclude.insert(ServerId::new(id));
        }
    }
    (records, exclude)
}

fn usable<'a>(records: &'a [ServerRecord], exclude: &HashSet<ServerId>) -> Vec<&'a ServerRecord> {
    records
        .iter()
        .filter(|r| r.expires_at_ms > NOW && r.free_slots > 0 && !exclude.contains(&r.id))
        .collect()
}

fn seg_cost(r: &ServerRecord, len: usize, default_rtt: Duration) -> f64 {
    let spl = 1.0 / (r.tokens_per_sec * r.layers.len() as f64);
    len as f64 * spl + r.rtt.unwrap_or(default_rtt).as_secs_f64()
}

/// Every chain, by brute force: each of the `2^(n-1)` ways to cut `0..n` into contiguous
/// segments, each segment on its cheapest usable server (segments are independent, so that
/// is the best of all server assignments for that cut). Returns `(cost, hops)` of each
/// cut that some assignment can serve.
fn brute_force(n: usize, servers: &[&ServerRecord], default_rtt: Duration) -> Vec<(f64, usize)> {
    let mut out = Vec::new();
    for mask in 0u32..(1 << (n - 1)) {
        let mut bounds = vec![0];
        bounds.extend((1..n).filter(|i| mask & (1 << (i - 1)) != 0));
        bounds.push(n);
        let cost = bounds.windows(2).try_fold(0.0, |acc, w| {
            servers
                .iter()
                .filter(|s| s.layers.indices().start <= w[0] && w[1] <= s.layers.indices().end)
                .map(|s| seg_cost(s, w[1] - w[0], default_rtt))
                .min_by(f64::total_cmp)
                .map(|c| acc + c)
        });
        if let Some(c) = cost {
            out.push((c, bounds.len() - 1));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn routes_are_valid_and_optimal(
        n in 1usize..=8,
        raw in proptest::collection::vec(raw_server(), 0..=6),
    ) {
        let (records, exclude) = build(n, &raw);
        let params = RouteParams::default();
        let v = view(n, records.clone());
        let ok = usable(&records, &exclude);
        let chains = brute_force(n, &ok, params.default_rtt);
        match plan_route(&v, &params, &exclude) {
            Ok(route) => {
                let mut at = 0;
                for hop in &route.hops {
                    prop_assert_eq!(hop.layers.start, at);
                    prop_assert!(!hop.layers.is_empty());
                    at = hop.layers.end;
                    let s = ok.iter().find(|s| s.id == hop.server);
                    prop_assert!(s.is_some(), "{} is not usable", hop.server);
                    let s = s.unwrap();
                    prop_assert!(s.layers.start <= hop.layers.start && hop.layers.end <= s.layers.end);
                    prop_assert_eq!(hop.announced, s.layers);
                }
                prop_assert_eq!(at as usize, n);
                let best = chains.iter().map(|c| c.0).min_by(f64::total_cmp);
                prop_assert!(best.is_some(), "planner found a chain brute force did not");
                let best = best.unwrap();
                let eps = params.tie_epsilon_secs;
                prop_assert!(route.est_secs_per_token <= best + eps + 1e-12,
                    "planner {} vs brute force {}", route.est_secs_per_token, best);
                let fewest = chains.iter().filter(|c| c.0 <= best + eps).map(|c| c.1).min();
                prop_assert_eq!(Some(route.hops.len()), fewest);
                let chain: Vec<(ServerId, LayerRange)> =
                    route.hops.iter().map(|h| (h.server.clone(), h.layers)).collect();
                let cost = route_cost(&v, &chain, &params);
                prop_assert!(cost.is_some_and(|c| (c - route.est_secs_per_token).abs() < 1e-12));
            }
            Err(PlanError::Uncovered { uncovered, .. }) => {
                prop_assert!(chains.is_empty());
                let hosted = |l: usize| ok.iter().any(|s| s.layers.indices().contains(&l));
                let missing: Vec<usize> = (0..n).filter(|&l| !hosted(l)).collect();
                let named: Vec<usize> = uncovered.iter().flat_map(|r| r.indices()).collect();
                prop_assert_eq!(named, missing);
            }
            Err(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn placement_maximises_the_minimum(
        n in 1usize..=12,
        span in 1usize..=12,
        tps in 0.5f64..20.0,
        raw in proptest::collection::vec(raw_server(), 0..=6),
    ) {
        let (records, _) = build(n.min(8), &raw);
        let c = Coverage::of(&view(n, records));
        let p = choose_range(&c, span, tps).unwrap();
        let span = span.min(n);
        prop_assert_eq!(p.range.len() as usize, span);
        prop_assert!(p.range.end as usize <= n);
        let base = c.throughputs();
        for start in 0..=n - span {
            let min = (0..n)
                .map(|l| base[l] + if (start..start + span).contains(&l) { tps } else { 0.0 })
                .min_by(f64::total_cmp)
                .unwrap();
            prop_assert!(p.min_tokens_per_sec >= min, "start {} has min {} > {}", start, min, p.min_tokens_per_sec);
        }
    }
}

#[test]
fn whole_ranges_uses_each_server_for_its_whole_range_only() {
    // "fast" would be cheapest on a sub-range of its 0..6, but with whole ranges it can
    // only run all of 0..6, so the chain is fast 0..6 then b 6..10 (not a 0..4 + fast 4..6).
    let v = view(
        10,
        vec![
            rec_spl("a", 0, 4, 1e-3, 1),
            rec_spl("fast", 0, 6, 1e-4, 1),
            rec_spl("b", 6, 10, 1e-3, 1),
            rec_spl("c", 4, 10, 1e-3, 1),
        ],
    );
    let whole = RouteParams {
        whole_ranges: true,
        ..RouteParams::default()
    };
    let r = plan_route(&v, &whole, &none()).unwrap();
    assert_eq!(ids(&r), vec!["fast", "b"]);
    assert_eq!(ranges(&r), vec![lr(0, 6), lr(6, 10)]);
    for h in &r.hops {
        assert_eq!(h.layers, h.announced);
    }
    // Only overlapping ranges that do not tile: no whole-range chain exists.
    let gaps = view(
        10,
        vec![rec_spl("x", 0, 6, 1e-3, 1), rec_spl("y", 4, 10, 1e-3, 1)],
    );
    assert!(plan_route(&gaps, &whole, &none()).is_err());
    assert!(plan_route(&gaps, &RouteParams::default(), &none()).is_ok());
}
