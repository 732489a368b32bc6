//! Property-based fuzzing (proptest) of what hostile input reaches first: the Meta and Kapso
//! normalisers and routers, the signature check, and the config loader. Each must answer —
//! `Ok` or an error — and never panic. Inputs are both raw (any bytes, any JSON tree) and
//! structure-aware (a real fixture with one value replaced, one key dropped, or nested
//! deeply). A failing input is kept by proptest under `proptest-regressions/` and replayed
//! first on every later run. `WAHOOK_FUZZ_CASES` sets the cases per target (default 256);
//! `scripts/fuzz.sh` runs them for a bounded time.

use chrono::Utc;
use proptest::{prelude::*, test_runner::Config as Cases};
use serde_json::Value;
use wahook::ingest::{self, Admit, Routing, Source, route, signature};

use crate::common::fixture;

fn cases() -> Cases {
    let n = std::env::var("WAHOOK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    Cases {
        cases: n,
        // Shrinking a parser failure to its smallest input is worth a little time.
        max_shrink_iters: 2048,
        ..Cases::default()
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        // Values the parsers look for, so random trees reach deeper code.
        prop::sample::select(vec![
            "whatsapp_business_account",
            "messages",
            "statuses",
            "text",
            "PHONE_NUMBER",
            "111111111111111",
            "4917600000001",
            "1767225600",
            "delivered",
            "read",
            "failed",
            "whatsapp.message.received",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "object",
                    "entry",
                    "id",
                    "changes",
                    "field",
                    "value",
                    "metadata",
                    "phone_number_id",
                    "contacts",
                    "wa_id",
                    "profile",
                    "name",
                    "messages",
                    "from",
                    "from_user_id",
                    "to",
                    "timestamp",
                    "type",
                    "text",
                    "body",
                    "statuses",
                    "status",
                    "recipient_id",
                    "errors",
                    "message",
                    "conversation",
                    "data",
                    "event",
                    "phone_number",
                    "project_id",
                    "x",
                ])
                .prop_map(String::from),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every path to a value in a JSON tree.
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(k.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(i.to_string());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, key| match v {
        Value::Object(m) => m.get_mut(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    })
}

const META: &[&str] = &[
    "meta/all_message_types.json",
    "meta/batched_entries_changes_statuses.json",
    "meta/errors_value_level_rate_limit.json",
    "meta/sender_from_user_id_two_contacts.json",
    "meta/text_bsuid_no_phone.json",
    "meta/status_without_recipient_known.json",
];
const KAPSO: &[&str] = &[
    "kapso/message_received.json",
    "kapso/message_received_batch.json",
    "kapso/workflow_handoff.json",
];

/// A fixture with one value replaced by a random one, or removed.
fn mutated(files: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        prop::sample::select(files),
        any::<prop::sample::Index>(),
        any_json(),
        any::<bool>(),
    )
        .prop_map(|(file, index, replacement, remove)| {
            let mut doc: Value = serde_json::from_slice(&fixture(file)).unwrap();
            let mut all = Vec::new();
            paths(&doc, &mut Vec::new(), &mut all);
            let path = index.get(&all).clone();
            if let Some((last, parent)) = path.split_last()
                && remove
                && let Some(Value::Object(m)) = at(&mut doc, parent)
            {
                m.remove(last);
            } else if let Some(slot) = at(&mut doc, &path) {
                *slot = replacement;
            }
            doc.to_string()
        })
}

fn scope(pnid: &str) -> Admit {
    match pnid {
        "111111111111111" => Admit::In(1),
        "222222222222222" => Admit::Foreign,
        _ => Admit::Unknown,
    }
}

/// What the intake and the router run on a body: none of it may panic.
fn digest(body: &[u8]) {
    let _ = route::meta(body);
    let _ = route::kapso(body);
    let _ = route::strict(body);
    if let Ok(text) = std::str::from_utf8(body) {
        for source in [Source::Meta, Source::Kapso] {
            for event_type in [None, Some("whatsapp.message.received"), Some("x")] {
                let _ = ingest::normalize(source, event_type, text, Utc::now(), &scope);
            }
        }
    }
}

/// The intake's reading and the processor's agree: every phone number the processor even
/// asks about is one the intake routed the body by (so one whose secret signed it). A body the
/// intake refuses (an ambiguous routing id), or keeps without processing (a key given twice,
/// not JSON), never reaches the processor.
fn readings_agree(source: Source, body: &str) {
    let routing = match source {
        Source::Meta => route::meta(body.as_bytes()),
        Source::Kapso => route::kapso(body.as_bytes()),
    };
    let Routing::Json(ids) = routing else { return };
    if route::strict(body.as_bytes()) != route::Strict::Fine {
        return;
    }
    for event_type in [
        ids.event_type.as_deref(),
        Some("whatsapp.message.received"),
        Some("whatsapp.conversation.ended"),
    ] {
        let asked = std::cell::RefCell::new(Vec::<String>::new());
        // Every number admitted (no account has the empty one).
        let scope = |pnid: &str| {
            asked.borrow_mut().push(pnid.to_owned());
            if pnid.is_empty() {
                Admit::Unknown
            } else {
                Admit::In(1)
            }
        };
        let normalized = ingest::normalize(source, event_type, body, Utc::now(), &scope);
        for pnid in asked.borrow().iter().filter(|p| !p.is_empty()) {
            assert!(
                ids.phone_number_ids.contains(pnid),
                "the processor read phone_number_id {pnid:?}, the intake routed by {:?}: {body}",
                ids.phone_number_ids
            );
        }
        // Every item lands where the scope put it, under a number the intake read.
        if let Ok(n) = normalized {
            for item in &n.items {
                assert!(
                    ids.phone_number_ids.contains(&item.phone_number_id),
                    "{body}"
                );
            }
        }
    }
}

/// A real payload turned hostile: a routing id made a number, a routing object given twice
/// with another tenant's number, or a project body naming a number.
fn hostile(files: &'static [&'static str]) -> impl Strategy<Value = String> {
    (mutated(files), 0usize..5).prop_map(|(body, how)| match how {
        0 => body.replacen("\"phone_number_id\":\"", "\"phone_number_id\":0,\"x\":\"", 1),
        1 => body.replacen(
            "\"metadata\":{",
            "\"metadata\":{\"phone_number_id\":\"222222222222222\"},\"metadata\":{",
            1,
        ),
        2 => body.replacen(
            "\"conversation\":{",
            "\"conversation\":{\"phone_number_id\":\"222222222222222\"},\"conversation\":{",
            1,
        ),
        3 => body.replacen(
            "{",
            "{\"project_id\":\"proj-beta\",\"conversation\":{\"phone_number_id\":\"222222222222222\"},",
            1,
        ),
        _ => body,
    })
}

#[test]
fn the_intake_and_the_processor_read_the_same_numbers() {
    proptest!(cases(), |(body in hostile(META))| {
        readings_agree(Source::Meta, &body);
    });
    proptest!(cases(), |(body in hostile(KAPSO))| {
        readings_agree(Source::Kapso, &body);
    });
    proptest!(cases(), |(doc in any_json())| {
        readings_agree(Source::Meta, &doc.to_string());
        readings_agree(Source::Kapso, &doc.to_string());
    });
}

#[test]
fn parsers_survive_any_bytes() {
    proptest!(cases(), |(body in prop::collection::vec(any::<u8>(), 0..512))| {
        digest(&body);
    });
}

#[test]
fn parsers_survive_any_json_tree() {
    proptest!(cases(), |(doc in any_json())| {
        digest(doc.to_string().as_bytes());
    });
}

#[test]
fn meta_normaliser_survives_mutated_real_payloads() {
    proptest!(cases(), |(body in mutated(META))| {
        digest(body.as_bytes());
    });
}

#[test]
fn kapso_normaliser_survives_mutated_real_payloads() {
    proptest!(cases(), |(body in mutated(KAPSO))| {
        digest(body.as_bytes());
    });
}

#[test]
fn deeply_nested_and_truncated_json_is_an_error_not_a_crash() {
    proptest!(cases(), |(depth in 1usize..20_000, cut in any::<prop::sample::Index>())| {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        digest(nested.as_bytes());
        let nested_objects = format!("{}1{}", "{\"entry\":".repeat(depth), "}".repeat(depth));
        digest(nested_objects.as_bytes());
        let real = fixture(META[0]);
        digest(&real[..cut.index(real.len())]);
    });
}

#[test]
fn only_the_right_signature_verifies() {
    proptest!(cases(), |(
        secret in prop::collection::vec(any::<u8>(), 1..64),
        body in prop::collection::vec(any::<u8>(), 0..256),
        header in prop::collection::vec(any::<u8>(), 0..80),
        flip in any::<prop::sample::Index>(),
    )| {
        // Any header parses or is refused, never panics.
        let _ = signature::parse_meta_header(Some(&header));
        let _ = signature::parse_kapso_header(Some(&header));
        let right = signature::meta_header(&secret, &body);
        let digest = signature::parse_meta_header(Some(right.as_bytes())).unwrap();
        prop_assert!(signature::verify(&secret, &body, &digest));
        // One changed hex digit is refused.
        let mut wrong = right.clone().into_bytes();
        let i = 7 + flip.index(64);
        wrong[i] = if wrong[i] == b'0' { b'1' } else { b'0' };
        if let Ok(d) = signature::parse_meta_header(Some(&wrong)) {
            prop_assert!(!signature::verify(&secret, &body, &d));
        }
        let kapso = signature::sign_hex(&secret, &body);
        let d = signature::parse_kapso_header(Some(kapso.as_bytes())).unwrap();
        prop_assert!(signature::verify(&secret, &body, &d));
    });
}

#[test]
fn the_config_loader_answers_any_file_with_ok_or_a_named_error() {
    const KEYS: &[&str] = &[
        "[server]\nlisten",
        "[server]\nbody_limit_bytes",
        "[database]\nurl",
        "[database]\nmax_connections",
        "[processing]\nmax_attempts",
        "[processing]\nbackoff_base_ms",
        "[health]\nstuck_after_seconds",
        "[[accounts]]\nphone_number_id",
        "[[accounts]]\napp_secret",
        "[agents.a]\nmodel",
        "[graph]\nbase_url",
        "[log]\nformat",
        "[serverr]\nlisten",
        "[processing]\nmax_attempt",
    ];
    let dir = tempfile::tempdir().unwrap();
    let values = prop_oneof![
        Just("\"x\"".to_owned()),
        Just("-1".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("true".to_owned()),
        Just("[1, \"a\"]".to_owned()),
        Just("{ a = 1 }".to_owned()),
        Just("\"127.0.0.1:0\"".to_owned()),
        "[ -~]{0,20}".prop_map(|s| format!("{s:?}")),
        "[ -~]{0,20}",
    ];
    let path = dir.path().join("wahook.toml");
    proptest!(cases(), |(
        lines in prop::collection::vec((prop::sample::select(KEYS), values.clone()), 0..6),
        junk in "[ -~\n]{0,40}",
        with_junk in any::<bool>(),
    )| {
        let mut text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        if with_junk {
            text.push_str(&junk);
        }
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = wahook::config::Config::load_file(&path) {
            prop_assert!(!e.to_string().is_empty());
        }
    });
}
