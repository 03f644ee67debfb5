//! The binary refuses bad input before it connects anywhere.

use std::process::Command;

fn loadgen(args: &[&str]) -> std::io::Result<(i32, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn a_target_off_this_machine_is_refused_naming_the_address_and_the_rule() {
    let (code, stderr) = loadgen(&["--target", "ws://10.20.30.40:8000", "--duration", "1s"])
        .expect("the binary runs");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("10.20.30.40:8000"), "{stderr}");
    assert!(
        stderr.contains("only loopback addresses (127.0.0.0/8 or ::1)"),
        "{stderr}"
    );
}

#[test]
fn a_bad_profile_is_refused_naming_the_field_and_what_is_allowed() {
    let dir = std::env::temp_dir().join(format!("loadgen-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.json");
    std::fs::write(
        &path,
        r#"{"phases":[{"name":"a","kind":"wave","duration":"1s","connections":1,"messages_per_sec":1}]}"#,
    )
    .expect("write");
    let (code, stderr) = loadgen(&[
        "--target",
        "ws://127.0.0.1:1",
        "--profile",
        path.to_str().expect("utf-8 path"),
    ])
    .expect("the binary runs");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("phases[0].kind"), "{stderr}");
    assert!(stderr.contains("steady, ramp, spike, calm"), "{stderr}");
}

#[test]
fn a_bad_duration_flag_is_refused() {
    let (code, stderr) =
        loadgen(&["--target", "127.0.0.1:1", "--duration", "soon"]).expect("the binary runs");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("bad duration"), "{stderr}");
}
