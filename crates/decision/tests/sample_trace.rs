//! The bundled sample trace is exactly what the simulator produces, so it
//! cannot drift from the policy it demonstrates.

#[path = "../examples/simulate.rs"]
#[allow(dead_code, unreachable_pub)]
mod simulate;

#[test]
fn bundled_trace_matches_the_simulator() {
    let bundled = include_str!("../examples/spike-then-calm.jsonl");
    let generated: String = simulate::trace()
        .expect("the default policy is valid")
        .iter()
        .map(|l| serde_json::to_string(l).expect("serializable") + "\n")
        .collect();
    assert_eq!(
        bundled, generated,
        "regenerate with: cargo run -p rtc-decision --example simulate > crates/decision/examples/spike-then-calm.jsonl"
    );
}
