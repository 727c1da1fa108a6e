//! Sampling chain semantics, determinism, and stop strings.

use lamina_sharding::sampling::{argmax, Sampler, SamplingParams, StopChecker};
use lamina_sharding::Error;

fn params(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        seed: 1234,
        ..SamplingParams::default()
    }
}

/// A deterministic pseudo-random logit vector (no RNG dependency in the test itself).
fn logits(n: usize, salt: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ salt).wrapping_mul(2_654_435_761).rotate_left(13) % 10_000;
            h as f32 / 1000.0 - 5.0
        })
        .collect()
}

#[test]
fn default_is_greedy() {
    let p = SamplingParams::default();
    assert_eq!(p, SamplingParams::greedy());
    assert!(p.is_greedy());
    assert_eq!(p.temperature, 0.0);
    assert_eq!(p.top_k, 0);
    assert_eq!(p.top_p, 1.0);
    assert_eq!(p.min_p, 0.0);
    assert_eq!(p.repetition_penalty, 1.0);
    assert_eq!(p.repetition_window, 64);
    assert_eq!(p.seed, 0);
    assert!(!params(0.7).is_greedy());
}

#[test]
fn greedy_equals_argmax() {
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    for salt in 0..50 {
        let l = logits(1000, salt);
        assert_eq!(s.sample(&l, &[]).unwrap(), argmax(&l));
    }
    // Ties go to the first index, NaN never wins.
    assert_eq!(s.sample(&[1.0, 5.0, 5.0, f32::NAN], &[]).unwrap(), 1);
}

#[test]
fn top_k_one_is_greedy_at_any_temperature() {
    for t in [0.1, 1.0, 2.5, 100.0] {
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            ..params(t)
        })
        .unwrap();
        for salt in 0..20 {
            let l = logits(500, salt);
            assert_eq!(s.sample(&l, &[]).unwrap(), argmax(&l), "t = {t}");
        }
    }
}

#[test]
fn same_seed_same_sequence() {
    let p = SamplingParams {
        top_k: 40,
        top_p: 0.95,
        min_p: 0.01,
        repetition_penalty: 1.1,
        ..params(0.8)
    };
    let run = |p: SamplingParams| {
        let mut s = Sampler::new(p).unwrap();
        let mut history = Vec::new();
        for salt in 0..200 {
            let t = s.sample(&logits(2000, salt % 7), &history).unwrap();
            history.push(t);
        }
        history
    };
    let a = run(p.clone());
    assert_eq!(a, run(p.clone()));
    let b = run(SamplingParams { seed: 99, ..p });
    assert_ne!(a, b);
    // Not degenerate: the draws actually vary.
    let distinct: std::collections::HashSet<_> = a.iter().collect();
    assert!(distinct.len() > 10);
}

#[test]
fn frequencies_follow_the_softmax_at_temperature_one() {
    let probs = [0.1f64, 0.2, 0.3, 0.4];
    let l: Vec<f32> = probs.iter().map(|p| p.ln() as f32).collect();
    let mut s = Sampler::new(params(1.0)).unwrap();
    let n = 20_000;
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[s.sample(&l, &[]).unwrap() as usize] += 1;
    }
    let chi2: f64 = counts
        .iter()
        .zip(probs)
        .map(|(&c, p)| {
            let e = p * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum();
    // 3 degrees of freedom: P(chi2 > 16.27) = 0.001.
    assert!(chi2 < 16.27, "chi2 {chi2}, counts {counts:?}");
}

#[test]
fn temperature_sharpens_and_flattens() {
    let l: Vec<f32> = [0.1f64, 0.2, 0.3, 0.4]
        .iter()
        .map(|p| p.ln() as f32)
        .collect();
    let top_share = |t: f32| {
        let mut s = Sampler::new(params(t)).unwrap();
        (0..5000)
            .filter(|_| s.sample(&l, &[]).unwrap() == 3)
            .count()
    };
    assert!(top_share(0.05) > 4900);
    let flat = top_share(50.0);
    assert!((1000..1500).contains(&flat), "{flat}");
}

#[test]
fn top_p_never_leaves_the_nucleus() {
    // Probabilities 0.4, 0.3, 0.2, 0.1 by id 3, 2, 1, 0: the 0.5 nucleus is {3, 2}.
    let l: Vec<f32> = [0.1f64, 0.2, 0.3, 0.4]
        .iter()
        .map(|p| p.ln() as f32)
        .collect();
    let mut s = Sampler::new(SamplingParams {
        top_p: 0.5,
        ..params(1.0)
    })
    .unwrap();
    let mut seen = [0usize; 4];
    for _ in 0..5000 {
        seen[s.sample(&l, &[]).unwrap() as usize] += 1;
    }
    assert_eq!(seen[0] + seen[1], 0, "{seen:?}");
    assert!(seen[2] > 1500 && seen[3] > 2000, "{seen:?}");

    // Top-p below the most likely token's own mass keeps just that token, even when a high
    // temperature would otherwise spread the draws.
    let mut s = Sampler::new(SamplingParams {
        top_p: 0.35,
        ..params(5.0)
    })
    .unwrap();
    assert!((0..500).all(|_| s.sample(&l, &[]).unwrap() == 3));
}

#[test]
fn top_p_on_a_large_vocabulary_keeps_only_likely_tokens() {
    let mut l = vec![-10.0f32; 50_000];
    for (i, v) in [(123usize, 5.0f32), (4567, 4.5), (40_000, 4.0)] {
        l[i] = v;
    }
    let mut s = Sampler::new(SamplingParams {
        top_p: 0.9,
        ..params(1.0)
    })
    .unwrap();
    for _ in 0..2000 {
        let t = s.sample(&l, &[]).unwrap();
        assert!([123, 4567, 40_000].contains(&t), "{t}");
    }
}

#[test]
fn min_p_drops_unlikely_tokens() {
    // p = 0.5, 0.3, 0.15, 0.05; min_p 0.2 keeps p >= 0.1, i.e. ids 0..3.
    let l: Vec<f32> = [0.5f64, 0.3, 0.15, 0.05]
        .iter()
        .map(|p| p.ln() as f32)
        .collect();
    let mut s = Sampler::new(SamplingParams {
        min_p: 0.2,
        ..params(1.0)
    })
    .unwrap();
    let mut seen = [0usize; 4];
    for _ in 0..5000 {
        seen[s.sample(&l, &[]).unwrap() as usize] += 1;
    }
    assert_eq!(seen[3], 0, "{seen:?}");
    assert!(seen[2] > 0);
}

#[test]
fn top_k_limits_candidates() {
    let l = logits(1000, 3);
    let mut sorted: Vec<(f32, u32)> = l.iter().enumerate().map(|(i, &x)| (x, i as u32)).collect();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let allowed: Vec<u32> = sorted[..5].iter().map(|x| x.1).collect();
    let mut s = Sampler::new(SamplingParams {
        top_k: 5,
        ..params(10.0)
    })
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        let t = s.sample(&l, &[]).unwrap();
        assert!(allowed.contains(&t));
        seen.insert(t);
    }
    assert_eq!(seen.len(), 5);
}

#[test]
fn repetition_penalty_lowers_repeated_tokens() {
    // Token 0 is the argmax until penalized; token 1 then wins.
    let l = [2.0f32, 1.5, -1.0, -0.5];
    let mut s = Sampler::new(SamplingParams {
        repetition_penalty: 1.5,
        ..SamplingParams::greedy()
    })
    .unwrap();
    assert_eq!(s.sample(&l, &[]).unwrap(), 0);
    assert_eq!(s.sample(&l, &[0]).unwrap(), 1);
    // Repeats count once: 2.0 / 1.5 is still below 1.5 / 1.5.
    assert_eq!(s.sample(&l, &[0, 0, 0, 0, 1]).unwrap(), 0);
    // Negative logits are multiplied by the penalty, which also lowers them.
    let neg = [-2.0f32, -1.0];
    assert_eq!(s.sample(&neg, &[1]).unwrap(), 1); // -1.5 still beats -2.0
    let neg = [-1.4f32, -1.0];
    assert_eq!(s.sample(&neg, &[1]).unwrap(), 0); // -1.5 now loses to -1.4

    // Only the last `repetition_window` tokens count.
    let mut s = Sampler::new(SamplingParams {
        repetition_penalty: 1.5,
        repetition_window: 2,
        ..SamplingParams::greedy()
    })
    .unwrap();
    assert_eq!(s.sample(&l, &[0, 3, 3]).unwrap(), 0);
    assert_eq!(s.sample(&l, &[3, 0]).unwrap(), 1);
    // Ids beyond the vocabulary are ignored rather than an error.
    assert_eq!(s.sample(&l, &[99_999]).unwrap(), 0);
}

#[test]
fn invalid_params_are_rejected_naming_the_field() {
    let cases = [
        (
            SamplingParams {
                temperature: -0.1,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: f32::INFINITY,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            "temperature",
        ),
        (
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: 1.01,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                top_p: f32::NAN,
                ..Default::default()
            },
            "top_p",
        ),
        (
            SamplingParams {
                min_p: 1.0,
                ..Default::default()
            },
            "min_p",
        ),
        (
            SamplingParams {
                min_p: -0.1,
                ..Default::default()
            },
            "min_p",
        ),
        (
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            "repetition_penalty",
        ),
        (
            SamplingParams {
                repetition_penalty: f32::NAN,
                ..Default::default()
            },
            "repetition_penalty",
        ),
    ];
    for (p, field) in cases {
        let err = p.validate().unwrap_err();
        assert!(matches!(err, Error::Sampling(_)));
        assert!(err.to_string().contains(field), "{err}");
        assert!(Sampler::new(p).is_err());
    }
}

#[test]
fn empty_or_all_nan_logits_are_errors() {
    for p in [SamplingParams::greedy(), params(1.0)] {
        let mut s = Sampler::new(p).unwrap();
        assert!(matches!(s.sample(&[], &[]), Err(Error::Sampling(_))));
        assert!(matches!(
            s.sample(&[f32::NAN, f32::NAN], &[]),
            Err(Error::Sampling(_))
        ));
        // A NaN among finite logits is simply never chosen.
        for _ in 0..100 {
            assert_eq!(s.sample(&[f32::NAN, 0.0, f32::NAN], &[]).unwrap(), 1);
        }
        // Infinite maxima degrade to argmax instead of producing NaN probabilities.
        assert_eq!(s.sample(&[0.0, f32::INFINITY, 1.0], &[]).unwrap(), 1);
        assert_eq!(
            s.sample(&[f32::NEG_INFINITY, f32::NEG_INFINITY], &[])
                .unwrap(),
            0
        );
        // -inf entries among finite ones are impossible tokens.
        for _ in 0..100 {
            assert_eq!(s.sample(&[f32::NEG_INFINITY, 0.0], &[]).unwrap(), 1);
        }
    }
}

#[test]
fn params_round_trip_through_json_and_fill_defaults() {
    let p = SamplingParams {
        top_k: 40,
        ..params(0.7)
    };
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<SamplingParams>(&json).unwrap(), p);
    let partial: SamplingParams = serde_json::from_str(r#"{"temperature": 0.5}"#).unwrap();
    assert_eq!(
        partial,
        SamplingParams {
            temperature: 0.5,
            ..SamplingParams::default()
        }
    );
    let s = Sampler::new(p.clone()).unwrap();
    assert_eq!(s.params(), &p);
}

// ---- stop strings ----

fn feed(stops: &[&str], pieces: &[&str]) -> (String, bool) {
    let mut c = StopChecker::new(stops.iter().map(|s| s.to_string()).collect());
    let mut out = String::new();
    for p in pieces {
        let (emit, stopped) = c.push(p);
        out.push_str(&emit);
        if stopped {
            return (out, true);
        }
    }
    out.push_str(&c.flush());
    (out, false)
}

#[test]
fn stop_string_split_across_pushes() {
    let mut c = StopChecker::new(vec!["</answer>".into()]);
    assert_eq!(c.push("42 </an"), ("42 ".to_string(), false));
    assert_eq!(c.push("swer"), (String::new(), false));
    assert_eq!(c.push("> trailing"), (String::new(), true));
    assert!(c.is_stopped());
    assert_eq!(c.push("more"), (String::new(), true));
    assert_eq!(c.flush(), "");
}

#[test]
fn partial_prefix_is_released_when_it_is_not_a_stop() {
    let mut c = StopChecker::new(vec!["\n\nUser:".into()]);
    assert_eq!(c.push("Hello\n"), ("Hello".to_string(), false));
    assert_eq!(c.push("\nUs"), (String::new(), false));
    assert_eq!(c.push("ually"), ("\n\nUsually".to_string(), false));
    // Held text at the end of the stream comes out on flush.
    assert_eq!(c.push(" \n\nU"), (" ".to_string(), false));
    assert_eq!(c.flush(), "\n\nU");
}

#[test]
fn multiple_stop_strings_earliest_wins() {
    assert_eq!(
        feed(&["END", "STOP"], &["a STOP b END"]),
        ("a ".into(), true)
    );
    assert_eq!(
        feed(&["END", "STOP"], &["a EN", "D b STOP"]),
        ("a ".into(), true)
    );
    // One stop string inside another: whichever starts first in the text ends it.
    assert_eq!(feed(&["abcd", "bc"], &["xa", "bc"]), ("xa".into(), true));
    assert_eq!(feed(&["abcd", "cd"], &["xab", "cd"]), ("x".into(), true));
    // Overlapping prefix: "aab" inside "aaab".
    assert_eq!(feed(&["aab"], &["a", "a", "a", "b!"]), ("a".into(), true));
    assert_eq!(
        feed(&["x"], &["no stop here"]),
        ("no stop here".into(), false)
    );
    assert_eq!(feed(&[], &["a", "b"]), ("ab".into(), false));
    assert_eq!(feed(&[""], &["a", "b"]), ("ab".into(), false));
}

#[test]
fn unicode_stop_strings() {
    assert_eq!(
        feed(&["。"], &["你好", "世界。", "再见"]),
        ("你好世界".into(), true)
    );
    assert_eq!(
        feed(&["🛑 stop"], &["go 🛑", " st", "op now"]),
        ("go ".into(), true)
    );
    assert_eq!(
        feed(&["🛑 stop"], &["go 🛑", " sta"]),
        ("go 🛑 sta".into(), false)
    );
    let mut c = StopChecker::new(vec!["ñu".into()]);
    assert_eq!(c.push("añ"), ("a".to_string(), false));
    assert_eq!(c.push("o"), ("ño".to_string(), false));
}
