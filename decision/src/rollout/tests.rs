use std::time::Duration;

use super::*;

fn names(n: usize) -> Vec<String> {
    // Given out of order on purpose: compile sorts.
    (0..n).rev().map(|i| format!("web-{i:02}")).collect()
}

fn deploy(targets: &[&str], slot: Slot) -> Step {
    Step::Deploy {
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        slot,
    }
}

fn route(weights: &[(Slot, u8)]) -> Step {
    Step::Route {
        weights: weights.to_vec(),
        matched: None,
        drained: Vec::new(),
    }
}

fn drain(targets: &[&str]) -> Step {
    Step::Route {
        weights: vec![(Slot::Stable, 100)],
        matched: None,
        drained: targets.iter().map(|t| (*t).to_owned()).collect(),
    }
}

#[test]
fn parses_the_rfc_examples() {
    let canary = Strategy::from_args(&[
        "--strategy",
        "canary",
        "--steps",
        "5,25,50,100",
        "--pause",
        "2m",
        "--analysis",
        "errors-and-latency",
        "--router",
        "edge",
    ])
    .unwrap();
    assert_eq!(
        canary,
        Strategy::Canary {
            steps: vec![5, 25, 50, 100],
            pause: Some(PauseKind::For(Duration::from_secs(120))),
            analysis: Some(AnalysisSpec {
                checks: "errors-and-latency".into(),
                duration: DEFAULT_ANALYSIS,
            }),
            router: "edge".into(),
        }
    );
    let rolling = Strategy::from_args(&[
        "--strategy",
        "rolling",
        "--batch",
        "3",
        "--max-unavailable",
        "1",
        "--pause",
        "30s",
    ])
    .unwrap();
    assert_eq!(
        rolling,
        Strategy::Rolling {
            batch: BatchSize::Count(3),
            max_unavailable: 1,
            pause: Some(PauseKind::For(Duration::from_secs(30))),
            analysis: None,
            router: None,
        }
    );
    assert!(matches!(
        Strategy::from_args(&["--strategy", "rolling", "--batch=30%"]).unwrap(),
        Strategy::Rolling {
            batch: BatchSize::Percent(30),
            max_unavailable: 1,
            ..
        }
    ));
    let bg = Strategy::from_args(&[
        "--strategy",
        "blue-green",
        "--router",
        "edge",
        "--keep-old",
        "15m",
    ])
    .unwrap();
    assert_eq!(
        bg,
        Strategy::BlueGreen {
            keep_old: Duration::from_secs(900),
            router: "edge".into(),
            analysis: None,
        }
    );
    assert_eq!(Strategy::from_args(&[]).unwrap(), Strategy::AllAtOnce);
    assert!(matches!(
        Strategy::from_args(&["--strategy", "a-b", "--router", "edge", "--match", "header:X-Beta=1"]).unwrap(),
        Strategy::AB { match_: HeaderOrCookie::Header { ref name, ref value }, .. } if name == "X-Beta" && value == "1"
    ));
}

#[test]
fn refuses_bad_settings_with_clear_errors() {
    let err = |args: &[&str]| Strategy::from_args(args).unwrap_err().to_string();
    let canary = |steps: &str| err(&["--strategy", "canary", "--router", "edge", "--steps", steps]);
    assert!(canary("5,50,25,100").contains("strictly increasing (50 then 25)"));
    assert!(canary("5,5,100").contains("strictly increasing"));
    assert!(canary("5,25,50").contains("end at 100"));
    assert!(canary("0,100").contains("weight 0 is not between 1 and 100"));
    assert!(canary("5,101").contains("not between 1 and 100"));
    assert!(canary("5,x").contains("`x` is not a weight"));
    assert!(err(&["--strategy", "canary", "--steps", "100"]).contains("needs --router"));
    assert!(err(&["--strategy", "rolling", "--batch", "0"]).contains("at least 1"));
    assert!(err(&["--strategy", "rolling", "--batch", "0%"]).contains("between 1% and 100%"));
    assert!(err(&["--strategy", "rolling", "--batch", "-3"]).contains("neither"));
    assert!(err(&["--strategy", "rolling", "--batch", "2", "--pause", "30"]).contains("--pause"));
    assert!(
        err(&["--strategy", "rolling", "--batch", "2", "--pause", "30d"]).contains("s, m or h")
    );
    assert!(
        err(&["--strategy", "rolling", "--batch", "2", "--steps", "5,100"])
            .contains("--steps does not apply to --strategy rolling")
    );
    assert!(err(&[
        "--strategy",
        "rolling",
        "--batch",
        "2",
        "--max-unavailable",
        "0"
    ])
    .contains("--max-unavailable must be at least 1"));
    assert!(err(&["--strategy", "linear"]).contains("unknown strategy `linear`"));
    assert!(
        err(&["--strategy", "a-b", "--router", "e", "--match", "query:x=1"])
            .contains("header:NAME=VALUE")
    );
    let served = "compares the traffic each version serves";
    assert!(err(&[
        "--strategy",
        "blue-green",
        "--router",
        "e",
        "--analysis",
        "prometheus"
    ])
    .contains(served));
    let single = err(&[
        "--strategy",
        "canary",
        "--router",
        "e",
        "--steps",
        "100",
        "--analysis",
        "prometheus:/metrics",
    ]);
    assert!(
        single.contains(served) && single.contains("a weight below 100"),
        "{single}"
    );
    assert!(err(&["--strategy"]).contains("needs a value"));
    assert!(err(&["--pause", "1s", "--pause", "2s"]).contains("twice"));
}

#[test]
fn durations_have_units() {
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    for bad in [
        "",
        "s",
        "30",
        "1.5m",
        "-1s",
        "1d",
        "m2",
        "99999999999999999999h",
        "200h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn all_at_once_is_one_deploy() {
    let steps = compile(&Strategy::AllAtOnce, &names(3)).unwrap();
    assert_eq!(
        steps,
        vec![deploy(&["web-00", "web-01", "web-02"], Slot::Stable)]
    );
}

#[test]
fn rolling_batches_in_name_order_with_max_unavailable() {
    let s = Strategy::from_args(&[
        "--strategy",
        "rolling",
        "--batch",
        "3",
        "--max-unavailable",
        "2",
        "--pause",
        "30s",
    ])
    .unwrap();
    let steps = compile(&s, &names(5)).unwrap();
    let pause = Step::Pause(PauseKind::For(Duration::from_secs(30)));
    assert_eq!(
        steps,
        vec![
            deploy(&["web-00", "web-01"], Slot::Stable),
            deploy(&["web-02"], Slot::Stable),
            pause.clone(),
            deploy(&["web-03", "web-04"], Slot::Stable),
            pause,
        ]
    );
    // 30 % of 10 is 3 per batch.
    let s = Strategy::from_args(&[
        "--strategy",
        "rolling",
        "--batch",
        "30%",
        "--max-unavailable",
        "3",
    ])
    .unwrap();
    let steps = compile(&s, &names(10)).unwrap();
    let sizes: Vec<usize> = steps
        .iter()
        .map(|s| match s {
            Step::Deploy { targets, .. } => targets.len(),
            _ => 0,
        })
        .collect();
    assert_eq!(sizes, vec![3, 3, 3, 1]);
    // max_unavailable must be below the number of targets.
    let s = Strategy::from_args(&[
        "--strategy",
        "rolling",
        "--batch",
        "1",
        "--max-unavailable",
        "3",
    ])
    .unwrap();
    let e = compile(&s, &names(3)).unwrap_err().to_string();
    assert!(e.contains("below the number of targets (3)"), "{e}");
}

#[test]
fn canary_follows_the_table() {
    let s = Strategy::from_args(&[
        "--strategy",
        "canary",
        "--steps",
        "25,100",
        "--pause",
        "manual",
        "--analysis",
        "errors",
        "--analysis-for",
        "5m",
        "--router",
        "edge",
    ])
    .unwrap();
    let steps = compile(&s, &names(4)).unwrap();
    let analyse = Step::Analyse {
        checks: "errors".into(),
        duration: Duration::from_secs(300),
    };
    let manual = Step::Pause(PauseKind::Manual);
    assert_eq!(
        steps,
        vec![
            deploy(&["web-00"], Slot::Canary),
            route(&[(Slot::Stable, 75), (Slot::Canary, 25)]),
            analyse.clone(),
            manual.clone(),
            route(&[(Slot::Stable, 0), (Slot::Canary, 100)]),
            analyse,
            manual,
            deploy(&["web-00", "web-01", "web-02", "web-03"], Slot::Stable),
            route(&[(Slot::Stable, 100), (Slot::Canary, 0)]),
            Step::Retire { slot: Slot::Canary },
        ]
    );
}

#[test]
fn a_canary_judged_on_served_traffic_is_not_analysed_at_100() {
    let s = Strategy::from_args(&[
        "--strategy",
        "canary",
        "--steps",
        "25,50,100",
        "--analysis",
        "prometheus:/metrics",
        "--analysis-for",
        "30s",
        "--router",
        "edge",
    ])
    .unwrap();
    let steps = compile(&s, &names(4)).unwrap();
    let analyse = Step::Analyse {
        checks: "prometheus:/metrics".into(),
        duration: Duration::from_secs(30),
    };
    assert_eq!(
        steps,
        vec![
            deploy(&["web-00"], Slot::Canary),
            route(&[(Slot::Stable, 75), (Slot::Canary, 25)]),
            analyse.clone(),
            route(&[(Slot::Stable, 50), (Slot::Canary, 50)]),
            analyse,
            route(&[(Slot::Stable, 0), (Slot::Canary, 100)]),
            deploy(&["web-00", "web-01", "web-02", "web-03"], Slot::Stable),
            route(&[(Slot::Stable, 100), (Slot::Canary, 0)]),
            Step::Retire { slot: Slot::Canary },
        ]
    );
    let spec = |checks: &str| AnalysisSpec {
        checks: checks.into(),
        duration: DEFAULT_ANALYSIS,
    };
    assert!(spec("prometheus").compares_served_traffic());
    assert!(spec("prometheus:/m?requests=x").compares_served_traffic());
    assert!(!spec("http:/prometheus").compares_served_traffic());
    assert!(!spec("errors-and-latency").compares_served_traffic());
}

#[test]
fn blue_green_follows_the_table() {
    let s = Strategy::from_args(&[
        "--strategy",
        "blue-green",
        "--router",
        "edge",
        "--keep-old",
        "15m",
        "--analysis",
        "smoke",
    ])
    .unwrap();
    let steps = compile(&s, &names(2)).unwrap();
    assert_eq!(
        steps,
        vec![
            deploy(&["web-00", "web-01"], Slot::Green),
            Step::Analyse {
                checks: "smoke".into(),
                duration: DEFAULT_ANALYSIS
            },
            route(&[(Slot::Stable, 0), (Slot::Green, 100)]),
            Step::Pause(PauseKind::For(Duration::from_secs(900))),
            deploy(&["web-00", "web-01"], Slot::Stable),
            route(&[(Slot::Stable, 100), (Slot::Green, 0)]),
            Step::Retire { slot: Slot::Green },
        ]
    );
}

#[test]
fn a_b_routes_the_match_until_promoted() {
    let s = Strategy::from_args(&[
        "--strategy",
        "a-b",
        "--router",
        "edge",
        "--match",
        "cookie:beta=yes",
    ])
    .unwrap();
    let steps = compile(&s, &names(2)).unwrap();
    assert_eq!(steps[0], deploy(&["web-00"], Slot::B));
    assert!(matches!(
        &steps[1],
        Step::Route {
            matched: Some((HeaderOrCookie::Cookie { .. }, Slot::B)),
            ..
        }
    ));
    assert_eq!(steps[2], Step::Pause(PauseKind::Manual));
    assert_eq!(steps.last(), Some(&Step::Retire { slot: Slot::B }));
}

#[test]
fn compile_is_deterministic_and_refuses_bad_targets() {
    let s = Strategy::from_args(&[
        "--strategy",
        "canary",
        "--steps",
        "5,25,50,100",
        "--router",
        "r",
    ])
    .unwrap();
    let mut shuffled = names(7);
    let a = compile(&s, &shuffled).unwrap();
    shuffled.sort();
    let b = compile(&s, &shuffled).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        plan_fragment(&s, &a).unwrap(),
        plan_fragment(&s, &b).unwrap()
    );
    assert!(compile(&s, &[])
        .unwrap_err()
        .to_string()
        .contains("at least one target"));
    let twice = vec!["a".to_owned(), "a".to_owned()];
    assert!(compile(&s, &twice)
        .unwrap_err()
        .to_string()
        .contains("named twice"));
    // A strategy read back from storage is validated again.
    let bad = Strategy::Canary {
        steps: vec![50, 25],
        pause: None,
        analysis: None,
        router: "r".into(),
    };
    assert!(compile(&bad, &names(2)).is_err());
}

#[test]
fn plan_fragment_is_canonical_and_round_trips() {
    let s = Strategy::from_args(&[
        "--strategy",
        "canary",
        "--steps",
        "50,100",
        "--pause",
        "1m",
        "--router",
        "edge",
    ])
    .unwrap();
    let steps = compile(&s, &names(2)).unwrap();
    let bytes = plan_fragment(&s, &steps).unwrap();
    assert!(crate::canonical::is_canonical(&bytes));
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.starts_with(r#"{"steps":[{"deploy":{"slot":"canary","targets":["web-00"]}},{"route":{"weights":[["stable",50],["canary",50]]}},{"pause":{"for":60}}"#),
        "{text}"
    );
    assert!(text.ends_with(r#""strategy":{"pause":{"for":60},"router":"edge","steps":[50,100],"strategy":"canary"}}"#), "{text}");
    let back: Vec<Step> = serde_json::from_value(
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["steps"].clone(),
    )
    .unwrap();
    assert_eq!(back, steps);
    // Another strategy, another fragment.
    let other = Strategy::from_args(&[
        "--strategy",
        "canary",
        "--steps",
        "50,100",
        "--pause",
        "2m",
        "--router",
        "edge",
    ])
    .unwrap();
    assert_ne!(
        plan_fragment(&other, &compile(&other, &names(2)).unwrap()).unwrap(),
        bytes
    );
}

#[test]
fn rollback_routes_back_first_then_retires_then_restores() {
    // A canary that failed at its second weight.
    let s = Strategy::from_args(&[
        "--strategy",
        "canary",
        "--steps",
        "10,50,100",
        "--router",
        "edge",
    ])
    .unwrap();
    let steps = compile(&s, &names(3)).unwrap();
    let done = &steps[..3];
    assert_eq!(
        rollback_of(done),
        vec![
            route(&[(Slot::Stable, 100), (Slot::Canary, 0)]),
            Step::Retire { slot: Slot::Canary },
        ]
    );
    // A canary that failed while deploying stable: stable is restored too.
    let done = &steps[..5];
    assert_eq!(
        rollback_of(done),
        vec![
            route(&[(Slot::Stable, 100), (Slot::Canary, 0)]),
            Step::Retire { slot: Slot::Canary },
            Step::Restore {
                targets: vec!["web-00".into(), "web-01".into(), "web-02".into()],
                slot: Slot::Stable,
            },
        ]
    );
    // Blue-green after the switch: back to the old set, green retired.
    let bg = Strategy::from_args(&["--strategy", "blue-green", "--router", "edge"]).unwrap();
    let steps = compile(&bg, &names(2)).unwrap();
    assert_eq!(
        rollback_of(&steps[..2]),
        vec![
            route(&[(Slot::Stable, 100), (Slot::Green, 0)]),
            Step::Retire { slot: Slot::Green },
        ]
    );
    // A finished blue-green: green is gone and stable runs the new release, which is
    // restored to the previous one after the route back.
    assert_eq!(
        rollback_of(&steps),
        vec![
            route(&[(Slot::Stable, 100), (Slot::Green, 0)]),
            Step::Restore {
                targets: vec!["web-00".into(), "web-01".into()],
                slot: Slot::Stable,
            },
        ]
    );
    // Recorded steps naming blue (the old set in a slot of its own): blue is restored
    // before the route back.
    let with_blue = vec![
        deploy(&["web-00"], Slot::Green),
        route(&[(Slot::Blue, 0), (Slot::Green, 100)]),
        Step::Retire { slot: Slot::Blue },
    ];
    assert_eq!(
        rollback_of(&with_blue),
        vec![
            Step::Restore {
                targets: vec!["web-00".into()],
                slot: Slot::Blue,
            },
            route(&[(Slot::Blue, 100), (Slot::Green, 0)]),
            Step::Retire { slot: Slot::Green },
        ]
    );
    // A finished canary: the canary slot stays retired, stable gets the old release.
    let steps = compile(&s, &names(3)).unwrap();
    assert_eq!(
        rollback_of(&steps),
        vec![
            route(&[(Slot::Stable, 100), (Slot::Canary, 0)]),
            Step::Restore {
                targets: vec!["web-00".into(), "web-01".into(), "web-02".into()],
                slot: Slot::Stable,
            },
        ]
    );
    // Rolling: done batches restored, last first.
    let r = Strategy::from_args(&[
        "--strategy",
        "rolling",
        "--batch",
        "2",
        "--max-unavailable",
        "2",
    ])
    .unwrap();
    let steps = compile(&r, &names(5)).unwrap();
    assert_eq!(
        rollback_of(&steps[..2]),
        vec![
            Step::Restore {
                targets: vec!["web-02".into(), "web-03".into()],
                slot: Slot::Stable,
            },
            Step::Restore {
                targets: vec!["web-00".into(), "web-01".into()],
                slot: Slot::Stable,
            },
        ]
    );
    // Rolling behind a router: each done group drained, restored and put back, last
    // first; a failure at the first drain puts every target back.
    let rr = Strategy::from_args(&[
        "--strategy",
        "rolling",
        "--batch",
        "2",
        "--max-unavailable",
        "1",
        "--router",
        "edge",
    ])
    .unwrap();
    let steps = compile(&rr, &names(3)).unwrap();
    // web-00 done and put back; web-01 drained and deployed, which failed.
    assert_eq!(
        rollback_of(&steps[..5]),
        vec![
            drain(&["web-01"]),
            Step::Restore {
                targets: vec!["web-01".into()],
                slot: Slot::Stable,
            },
            drain(&[]),
            drain(&["web-00"]),
            Step::Restore {
                targets: vec!["web-00".into()],
                slot: Slot::Stable,
            },
            drain(&[]),
        ]
    );
    assert_eq!(rollback_of(&steps[..1]), vec![drain(&[])]);
    // Nothing done, nothing to undo.
    assert!(rollback_of(&[]).is_empty());
    // A/B: the match is dropped with the route back.
    let ab = Strategy::from_args(&[
        "--strategy",
        "a-b",
        "--router",
        "edge",
        "--match",
        "header:X-B=1",
    ])
    .unwrap();
    let steps = compile(&ab, &names(2)).unwrap();
    assert_eq!(
        rollback_of(&steps[..3]),
        vec![
            route(&[(Slot::Stable, 100), (Slot::B, 0)]),
            Step::Retire { slot: Slot::B }
        ]
    );
}

#[test]
fn backend_weights() {
    assert_eq!(backend_weight(0), 0);
    assert_eq!(backend_weight(5), 13);
    assert_eq!(backend_weight(50), 128);
    assert_eq!(backend_weight(100), 256);
    assert_eq!(backend_weight(200), 256);
}

#[test]
fn strategies_round_trip_through_json() {
    let all = [
        vec!["--strategy", "all-at-once"],
        vec![
            "--strategy",
            "rolling",
            "--batch",
            "30%",
            "--analysis",
            "smoke",
            "--pause",
            "manual",
        ],
        vec![
            "--strategy",
            "blue-green",
            "--router",
            "edge",
            "--keep-old",
            "1h",
        ],
        vec![
            "--strategy",
            "canary",
            "--steps",
            "5,100",
            "--router",
            "edge",
        ],
        vec![
            "--strategy",
            "a-b",
            "--router",
            "edge",
            "--match",
            "header:X-B=on",
        ],
    ];
    for args in all {
        let s = Strategy::from_args(&args).unwrap();
        assert_eq!(s.name(), args[1]);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["strategy"], args[1]);
        let back: Strategy = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.router().is_some(), args.contains(&"--router"));
    }
}

#[test]
fn rolling_behind_a_router_drains_each_group_before_replacing_it() {
    let s = Strategy::from_args(&[
        "--strategy",
        "rolling",
        "--batch",
        "3",
        "--max-unavailable",
        "2",
        "--pause",
        "5s",
        "--router",
        "edge",
    ])
    .unwrap();
    assert_eq!(s.router(), Some("edge"));
    let steps = compile(&s, &names(4)).unwrap();
    assert_eq!(
        steps,
        vec![
            drain(&["web-00", "web-01"]),
            deploy(&["web-00", "web-01"], Slot::Stable),
            drain(&[]),
            drain(&["web-02"]),
            deploy(&["web-02"], Slot::Stable),
            drain(&[]),
            Step::Pause(PauseKind::For(Duration::from_secs(5))),
            drain(&["web-03"]),
            deploy(&["web-03"], Slot::Stable),
            drain(&[]),
            Step::Pause(PauseKind::For(Duration::from_secs(5))),
        ]
    );
    // Without a router the plan is what it was, and its JSON names no router or drain.
    let plain = Strategy::from_args(&["--strategy", "rolling", "--batch", "3"]).unwrap();
    let fragment = plan_fragment(&plain, &compile(&plain, &names(4)).unwrap()).unwrap();
    let text = String::from_utf8(fragment).unwrap();
    assert!(
        !text.contains("router") && !text.contains("drained"),
        "{text}"
    );
    let err = Strategy::from_args(&["--strategy", "rolling", "--batch", "3", "--router", " "])
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs --router NAME"), "{err}");
}
