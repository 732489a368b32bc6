//! Configuration typos: an unknown key or section fails start-up (exit 1) naming the key,
//! where it came from and the nearest valid key; `wahook config --check` validates without a
//! database.

use std::process::Output;

use crate::foundation::wahook;

const ACCOUNT: &str = "[[accounts]]\nworkspace = \"w\"\nphone_number_id = \"1\"\n\
                       verify_token = \"t\"\napp_secret = \"s\"\n";

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let file = dir.path().join("wahook.toml");
    std::fs::write(&file, text).unwrap();
    file
}

fn serve_with_file(text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, text);
    wahook()
        .arg("serve")
        .current_dir(dir.path())
        .env("WAHOOK_CONFIG", &file)
        .output()
        .unwrap()
}

fn assert_refused(out: &Output, expected: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "exit code 1");
    let err = String::from_utf8_lossy(&out.stderr);
    for part in expected {
        assert!(err.contains(part), "`{part}` in: {err}");
    }
}

#[test]
fn a_misspelled_key_in_a_file_fails_start_up_with_a_suggestion() {
    let out = serve_with_file("[server]\nlisten_adress = \"127.0.0.1:9999\"\n");
    assert_refused(
        &out,
        &[
            "unknown key `server.listen_adress`",
            "wahook.toml",
            "did you mean `server.listen`?",
        ],
    );
}

#[test]
fn a_misspelled_section_fails_start_up_with_a_suggestion() {
    let out = serve_with_file("[procesing]\nbatch_max = 5\n");
    assert_refused(
        &out,
        &[
            "unknown key `procesing`",
            "wahook.toml",
            "did you mean `processing`?",
        ],
    );
}

#[test]
fn a_misspelled_key_in_an_account_fails_start_up_with_a_suggestion() {
    let out = serve_with_file(&format!("{ACCOUNT}kapso_secrt = \"k\"\n"));
    assert_refused(
        &out,
        &[
            "unknown key `accounts[0].kapso_secrt`",
            "wahook.toml",
            "did you mean `accounts[0].kapso_secret`?",
        ],
    );
}

#[test]
fn a_misspelled_environment_variable_fails_start_up_with_a_suggestion() {
    let out = wahook()
        .arg("serve")
        .env("WAHOOK_PROCESING__BATCH_MAX", "5")
        .output()
        .unwrap();
    assert_refused(
        &out,
        &[
            "unknown key `procesing.batch_max`",
            "environment variable WAHOOK_PROCESING__BATCH_MAX",
            "did you mean `processing.batch_max`?",
        ],
    );
    // The same for `wahook config`, which used to print the defaults as if all was well.
    let out = wahook()
        .arg("config")
        .env("WAHOOK_SERVER__LISTEN_ADRESS", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_refused(
        &out,
        &[
            "unknown key `server.listen_adress`",
            "WAHOOK_SERVER__LISTEN_ADRESS",
            "did you mean `server.listen`?",
        ],
    );
}

#[test]
fn config_check_validates_a_file_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    // A database URL nobody could reach: --check never connects.
    let good = write(
        &dir,
        &format!("[database]\nurl = \"postgres://nobody@127.0.0.1:1/none\"\n{ACCOUNT}"),
    );
    let out = wahook()
        .args(["config", "--check"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[intake]\nbatch_maxx = 5\n").unwrap();
    let out = wahook()
        .args(["config", "--check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_refused(
        &out,
        &[
            "unknown key `intake.batch_maxx`",
            "bad.toml",
            "did you mean `intake.batch_max`?",
        ],
    );
    // The environment is checked too.
    let out = wahook()
        .args(["config", "--check"])
        .arg(&good)
        .env("WAHOOK_INTAKE__BATCH_MAX", "0")
        .output()
        .unwrap();
    assert_refused(&out, &["intake.batch_max", "WAHOOK_INTAKE__BATCH_MAX"]);
    // Every problem is listed, not only the first.
    let out = wahook()
        .args(["config", "--check"])
        .arg(&good)
        .env("WAHOOK_INTAKE__BATCH_MAX", "0")
        .env("WAHOOK_PROCESSING__MAX_ATTEMPTS", "0")
        .env("WAHOOK_CLUSTER__TICK_MS", "0")
        .output()
        .unwrap();
    assert_refused(
        &out,
        &[
            "intake.batch_max",
            "processing.max_attempts",
            "cluster.tick_ms",
        ],
    );
    let out = wahook()
        .args(["config", "--check"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_refused(&out, &["missing.toml", "does not exist"]);
    assert!(!dir.path().join("data").exists(), "no database was created");
}

/// `display_phone_number` is informational: an account without it starts and answers.
#[tokio::test]
async fn an_account_without_display_phone_number_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, ACCOUNT);
    let mut cmd = wahook();
    cmd.current_dir(dir.path()).env("WAHOOK_CONFIG", &file);
    let (mut child, body) = crate::foundation::serve_and_health(cmd).await;
    assert_eq!(body["accounts"], 1, "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_bad_agent_config_fails_start_up_naming_the_key() {
    // An account naming an agent no [agents.x] table defines.
    let out = serve_with_file(&format!(
        "{ACCOUNT}agent = \"sales\"\naccess_token = \"t\"\n"
    ));
    assert_refused(
        &out,
        &[
            "accounts[0].agent",
            "names the agent `sales`",
            "defined: none",
        ],
    );
    let agent = "[agents.sales]\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"gpt-4o-mini\"\n";
    // The key variable the agent names is not set.
    let out = serve_with_file(&format!(
        "{agent}api_key_env = \"WAHOOK_TEST_UNSET_OPENAI_KEY\"\n{ACCOUNT}"
    ));
    assert_refused(
        &out,
        &["agents.sales.api_key_env", "WAHOOK_TEST_UNSET_OPENAI_KEY"],
    );
    // An account with an agent but no Graph token to send with.
    let out = serve_with_file(&format!("{agent}{ACCOUNT}agent = \"sales\"\n"));
    assert_refused(&out, &["accounts[0].access_token_env"]);
    // A misspelled agent key.
    let out = serve_with_file(&format!("{agent}reply_debounce = 100\n{ACCOUNT}"));
    assert_refused(
        &out,
        &[
            "unknown key `agents.sales.reply_debounce`",
            "did you mean `agents.sales.reply_debounce_ms`?",
        ],
    );
    // And a good one passes the check.
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        &dir,
        &format!(
            "{agent}{ACCOUNT}agent = \"sales\"\naccess_token_env = \"WAHOOK_TEST_GRAPH_TOKEN\"\n"
        ),
    );
    let out = wahook()
        .args(["config", "--check"])
        .arg(&good)
        .env("WAHOOK_TEST_GRAPH_TOKEN", "token")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn a_bad_notify_url_or_secret_fails_start_up_naming_the_key() {
    // A notify_url with nothing to sign with.
    let out = serve_with_file(&format!(
        "{ACCOUNT}notify_url = \"https://hooks.example/handoff\"\n"
    ));
    assert_refused(&out, &["accounts[0].notify_secret", "to sign with"]);
    // A secret that is not a Standard Webhooks secret.
    let out = serve_with_file(&format!(
        "{ACCOUNT}notify_url = \"https://hooks.example/handoff\"\nnotify_secret = \"hunter2\"\n"
    ));
    assert_refused(&out, &["accounts[0].notify_secret", "whsec_"]);
    // Too short a key.
    let out = serve_with_file(&format!(
        "{ACCOUNT}notify_url = \"https://hooks.example/handoff\"\nnotify_secret = \"whsec_c2hvcnQ=\"\n"
    ));
    assert_refused(&out, &["accounts[0].notify_secret", "24 to 64"]);
    // Not a URL one can POST to.
    let out = serve_with_file(&format!(
        "{ACCOUNT}notify_url = \"ftp://hooks.example\"\nnotify_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
    ));
    assert_refused(&out, &["accounts[0].notify_url", "http(s) URL"]);
}
