//! The README's first command on a fresh clone: a copy of the repository's tracked files (so no
//! `anvil/node_modules`), no `ANVIL_BIN`, no anvil on the PATH. `x402d dev`, run from the copy,
//! installs the pinned anvil into the copy's `anvil/` itself, and one SMS is paid through it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use serde_json::Value;
use x402d::client::{PayRequest, pay};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copies the files git tracks in this repository (as a clone would have them) into `to`.
fn copy_tracked_files(to: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(out.status.success(), "git ls-files failed");
    let mut copied = 0;
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        let from = repo.join(name);
        if !from.is_file() {
            continue; // deleted in the working tree, not committed yet
        }
        let dest = to.join(name);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&from, &dest).unwrap();
        copied += 1;
    }
    assert!(copied > 10, "only {copied} tracked files");
    assert!(to.join("anvil/install.sh").is_file());
    assert!(!to.join("anvil/node_modules").exists());
}

/// The PATH without any directory that holds an `anvil`.
fn path_without_anvil() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept: Vec<_> = std::env::split_paths(&path)
        .filter(|d| !d.join("anvil").exists())
        .collect();
    std::env::join_paths(kept).unwrap().into_string().unwrap()
}

#[tokio::test]
async fn dev_on_a_fresh_clone_installs_anvil_and_pays_an_sms() {
    let clone = tempfile::tempdir().unwrap();
    copy_tracked_files(clone.path());
    let env_path = clone.path().join("env.json");
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_x402d"))
        .args(["dev", "--payers", "1", "--port", &port.to_string()])
        .arg("--env-out")
        .arg(&env_path)
        .current_dir(clone.path())
        .env_remove("ANVIL_BIN")
        .env_remove("X402D_HOME")
        .env("PATH", path_without_anvil())
        .env("X402D_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The install downloads ~45 MB when npm's cache is cold.
    let mut env: Option<Value> = None;
    for _ in 0..1800 {
        if let Ok(text) = std::fs::read_to_string(&env_path)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            env = Some(v);
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("x402d dev exited before it was ready: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let env = env.expect("x402d dev wrote --env-out within 3 minutes");
    assert!(
        clone
            .path()
            .join("anvil/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
            .is_file(),
        "the pinned anvil was installed into the clone's anvil/"
    );

    let payer: PrivateKeySigner = env["payer_keys"][0].as_str().unwrap().parse().unwrap();
    let merchant = env["merchant_url"].as_str().unwrap();
    let out = pay(
        &reqwest::Client::new(),
        &payer,
        &PayRequest {
            method: reqwest::Method::POST,
            url: format!("{merchant}/api/v1/sms/send"),
            body: Some(r#"{"to":"+14155550100","message":"hello from a fresh clone"}"#.into()),
            headers: Vec::new(),
            network: Some(env["network"].as_str().unwrap().to_owned()),
            asset: None,
            max_amount: "1".into(),
            force_v1: false,
            scheme: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(out.receipt.expect("a settlement receipt").success);
    // SIGTERM, so that x402d stops its anvil too.
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("x402d dev stops within 20 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}
