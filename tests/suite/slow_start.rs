//! Slow start, end to end: a server set up again through the API takes a share
//! of requests that rises over `slow_start` up to its weight's share.

use crate::support;

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use support::{Load, Switchyard, api_send, checked, wait_until};

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_set_up_again_takes_a_share_rising_over_slow_start_to_its_weight_share() {
    let (a, b) = (checked("a").await, checked("b").await);
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
listen = "127.0.0.1:0"
routes = [{{ path_prefix = "/", upstream = "app" }}]

[upstream.app]
servers = [{{ addr = "{}" }}, {{ addr = "{}", slow_start = "2s" }}]
"#,
        a.addr(),
        b.addr()
    );
    let child = Switchyard::run_config_with_admin(&text, 1);
    let (proxy, admin) = (child.addr(), child.admin());
    let server_b = "/api/v1/upstreams/app/servers/1";

    let r = api_send(admin, Method::PATCH, server_b, r#"{"state":"down"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let load = Load::start(proxy, 4);
    wait_until(WITHIN, "traffic on a", || a.traffic() >= 50).await;
    assert_eq!(b.traffic(), 0);

    let r = api_send(admin, Method::PATCH, server_b, r#"{"state":"up"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let t0 = Instant::now();
    // Buckets of ~300 ms (measurement windows, not synchronisation): b's share
    // of the requests answered in each, with the bucket's start and end.
    let mut buckets: Vec<(Duration, Duration, usize, usize)> = Vec::new();
    let (mut a0, mut b0, mut start) = (a.traffic(), b.traffic(), t0.elapsed());
    while start < Duration::from_millis(2900) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (a1, b1, end) = (a.traffic(), b.traffic(), t0.elapsed());
        buckets.push((start, end, a1 - a0, b1 - b0));
        (a0, b0, start) = (a1, b1, end);
    }
    let (_, errors) = load.stop().await;
    assert_eq!(errors.len(), 0, "{errors:?}");

    let share =
        |&(_, _, da, db): &(Duration, Duration, usize, usize)| db as f64 / (da + db).max(1) as f64;
    let report: Vec<String> = buckets
        .iter()
        .map(|b| {
            format!(
                "{:?}..{:?}: {} of {} ({:.2})",
                b.0,
                b.1,
                b.3,
                b.2 + b.3,
                share(b)
            )
        })
        .collect();
    let report = report.join("\n");
    for b in &buckets {
        assert!(b.2 + b.3 >= 30, "too few requests to judge:\n{report}");
    }
    // At first b takes about a tenth of its weight: ~9% of requests.
    let first = share(&buckets[0]);
    assert!(first < 0.25, "first bucket share {first:.2}:\n{report}");
    // Late in the ramp (the last bucket that ends by 2s, starting after 1.2s)
    // it is near its weight share, one half.
    let late = buckets
        .iter()
        .rfind(|b| b.0 >= Duration::from_millis(1200) && b.1 <= Duration::from_millis(2000))
        .unwrap_or_else(|| panic!("no bucket late in the ramp:\n{report}"));
    let late = share(late);
    assert!(late > 0.35, "late share {late:.2}:\n{report}");
    assert!(late - first > 0.15, "no clear rise:\n{report}");
    // After the ramp: its weight share.
    let after: (usize, usize) = buckets
        .iter()
        .filter(|b| b.0 >= Duration::from_millis(2100))
        .fold((0, 0), |(x, y), b| (x + b.2, y + b.3));
    let after_share = after.1 as f64 / (after.0 + after.1).max(1) as f64;
    assert!(
        (0.4..=0.6).contains(&after_share),
        "share after the ramp {after_share:.2}:\n{report}"
    );
    // Rising: no bucket's share falls far below an earlier one's.
    let shares: Vec<f64> = buckets.iter().map(share).collect();
    for i in 1..shares.len() {
        let best_before = shares[..i].iter().cloned().fold(0.0, f64::max);
        assert!(shares[i] > best_before - 0.15, "share fell:\n{report}");
    }
    println!("{report}");
}
