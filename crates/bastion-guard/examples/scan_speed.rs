//! What the data guard costs: a ~1 KiB tool result, and large results.
//! Not a test (timings depend on the machine); run
//! `cargo run --release -p bastion-guard --example scan_speed` to print the
//! figures. Each figure is the best of several rounds: the machine may be
//! busy with other work, and the best round is the closest to the cost
//! itself.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bastion_guard::{Guard, Scope, Shape};
use serde_json::{Value, json};

fn best_of(rounds: u32, iterations: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iterations.div_ceil(10) {
        f();
    }
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..iterations {
            f();
        }
        best = best.min(start.elapsed() / iterations);
    }
    best
}

/// Text of the kind tools return: prose, log lines, JSON, numbers, code;
/// no sensitive value unless `salted`.
fn filler(bytes: usize, salted: bool) -> String {
    let parts = [
        "The repository has 1,234 open issues and 87 pull requests; the last release was v2.3.1 on 2024-03-15. ",
        "10.0.0.1 - - [15/Mar/2024:09:12:45 +0900] \"POST /mcp HTTP/1.1\" 200 1532 0.023 ",
        "{\"id\": \"3f2b8c1e-9d4a-4b7e-8f0a-1c2d3e4f5a6b\", \"count\": 1234567, \"price\": 19900} ",
        "주문 20240315-000123 의 합계는 1,290,000원이며 배송은 3월 18일 예정입니다. ",
        "let total = items.iter().map(|x| x.price * x.qty).sum::<u64>(); // task-42 ",
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 merged by build@ci into main. ",
    ];
    let salt = ["RRN 900101-1234568 ", "card 4111 1111 1111 1111 ", "key AKIAIOSFODNN7EXAMPLE "];
    let mut out = String::with_capacity(bytes + 200);
    let mut i = 0;
    while out.len() < bytes {
        out.push_str(parts[i % parts.len()]);
        if salted && i % 50 == 2 {
            out.push_str(salt[(i / 50) % salt.len()]);
        }
        i += 1;
    }
    out
}

fn kib_result(salted: bool) -> Value {
    json!({
        "content": [{"type": "text", "text": filler(600, salted)}],
        "structuredContent": {
            "items": [
                {"id": "3f2b8c1e-9d4a-4b7e-8f0a-1c2d3e4f5a6b", "title": "Release v2.3.1", "state": "open", "comments": 12},
                {"id": "9d4a4b7e-3f2b-8c1e-8f0a-1c2d3e4f5a6b", "title": "Fix the login page", "state": "closed", "comments": 3},
                {"id": "8f0a1c2d-9d4a-4b7e-3f2b-8c1e3e4f5a6b", "title": "Bump dependencies", "state": "open", "comments": 0},
            ],
            "total": 3,
        },
        "isError": false,
    })
}

fn main() {
    let guard = Guard::compile(&Default::default(), &Default::default()).expect("the default guard");
    let scope = Scope::tool("github", "list_issues");

    let clean = kib_result(false);
    let size = serde_json::to_string(&clean).unwrap().len();
    let mut v = clean.clone();
    let t = best_of(7, 20_000, || {
        black_box(guard.inspect_message(Shape::CallResult, black_box(&mut v), scope));
    });
    println!("{size} B tool result, nothing found:   {:>8.2} µs", t.as_secs_f64() * 1e6);

    let everything =
        serde_json::from_value(json!({"detectors": {"email": {"action": "mask"}, "phone": {"action": "mask"}}}))
            .expect("a guard section");
    let all_on = Guard::compile(&everything, &Default::default()).expect("the guard");
    let t = best_of(7, 20_000, || {
        black_box(all_on.inspect_message(Shape::CallResult, black_box(&mut v), scope));
    });
    println!("{size} B tool result, all 14 detectors on: {:>6.2} µs", t.as_secs_f64() * 1e6);

    let salted = kib_result(true);
    let clone_cost = best_of(7, 20_000, || {
        black_box(salted.clone());
    });
    let t = best_of(7, 20_000, || {
        let mut v = salted.clone();
        black_box(guard.inspect_message(Shape::CallResult, &mut v, scope));
    });
    let t = t.saturating_sub(clone_cost);
    let mut probe = salted.clone();
    let hits = guard.inspect_message(Shape::CallResult, &mut probe, scope).hits().len();
    println!("{size} B tool result, {hits} values masked:  {:>8.2} µs", t.as_secs_f64() * 1e6);

    for mib in [1usize, 16] {
        let bytes = mib << 20;
        let mut big = json!({"content": [{"type": "text", "text": filler(bytes, false)}]});
        let len = big["content"][0]["text"].as_str().unwrap().len();
        let t = best_of(5, 3, || {
            black_box(guard.inspect_message(Shape::CallResult, black_box(&mut big), scope));
        });
        println!("{mib:>2} MiB text, nothing found:          {:>8.0} MB/s", len as f64 / t.as_secs_f64() / 1e6);

        let rows: Vec<Value> = (0..bytes / 200)
            .map(|i| json!({"id": i, "name": format!("user {i}"), "note": filler(150, false)}))
            .collect();
        let mut table = json!({"content": [], "structuredContent": {"rows": rows}});
        let len = serde_json::to_string(&table).unwrap().len();
        let t = best_of(5, 3, || {
            black_box(guard.inspect_message(Shape::CallResult, black_box(&mut table), scope));
        });
        println!("{mib:>2} MiB of rows (structured), found none: {:>5.0} MB/s", len as f64 / t.as_secs_f64() / 1e6);

        let salted = json!({"content": [{"type": "text", "text": filler(bytes, true)}]});
        let t = best_of(5, 3, || {
            let mut v = salted.clone();
            black_box(guard.inspect_message(Shape::CallResult, &mut v, scope));
        });
        let c = best_of(5, 3, || {
            black_box(salted.clone());
        });
        let len = salted["content"][0]["text"].as_str().unwrap().len();
        let mut probe = salted.clone();
        let hits = guard.inspect_message(Shape::CallResult, &mut probe, scope).hits().len();
        println!(
            "{mib:>2} MiB text, {hits} values masked:   {:>8.0} MB/s",
            len as f64 / t.saturating_sub(c).as_secs_f64() / 1e6
        );
    }
}
