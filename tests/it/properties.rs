//! Property tests of the store's exactly-once claims: a small WhatsApp history over a few
//! conversations (inbound messages, our replies' echoes, their statuses) is applied twice —
//! once in order, each event once (the reference), and once the way production delivers it:
//! shuffled, with redeliveries in new envelopes (other bytes, so past the intake's dedup and
//! into the store), statuses before their message, crashes mid-stream with a restart, and a
//! replay of everything. Both must end in the same rows.
//!
//! Histories and chaos are drawn by proptest strategies (a fresh seed each run, so runs
//! explore different cases; a failing case prints its whole plan to replay it by hand). There
//! is no shrinking: a case is two servers.
//! `WAHOOK_PROPERTY_CASES` sets the number of cases (default 6 per backend).

use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config as Cases, TestRunner},
};

use crate::{both_backends, common::*};

both_backends!(
    any_interleaving_of_redeliveries_statuses_replays_and_crashes_ends_in_the_in_order_rows,
);

const T0: i64 = 1_767_225_600;

/// One event of the history: its payload's `value` fields.
#[derive(Debug, Clone)]
enum Event {
    Inbound {
        from: String,
        wamid: String,
        ts: i64,
    },
    Echo {
        to: String,
        wamid: String,
        ts: i64,
    },
    Status {
        to: String,
        wamid: String,
        status: &'static str,
        ts: i64,
    },
}

impl Event {
    /// The Meta payload; `envelope` changes the bytes (a redelivery Meta batched differently).
    fn body(&self, envelope: usize) -> String {
        let (field, value) = match self {
            Event::Inbound { from, wamid, ts } => (
                "messages",
                format!(
                    r#""contacts":[{{"profile":{{"name":"Lead {from}"}},"wa_id":"{from}"}}],"messages":[{{"from":"{from}","id":"{wamid}","timestamp":"{ts}","type":"text","text":{{"body":"hello {wamid}"}}}}]"#
                ),
            ),
            Event::Echo { to, wamid, ts } => (
                "smb_message_echoes",
                format!(
                    r#""message_echoes":[{{"from":"15551111111","to":"{to}","id":"{wamid}","timestamp":"{ts}","type":"text","text":{{"body":"reply {wamid}"}}}}]"#
                ),
            ),
            Event::Status {
                to,
                wamid,
                status,
                ts,
            } => {
                let errors = if *status == "failed" {
                    r#","errors":[{"code":131049,"title":"Not delivered"}]"#
                } else {
                    ""
                };
                (
                    "messages",
                    format!(
                        r#""statuses":[{{"id":"{wamid}","status":"{status}","timestamp":"{ts}","recipient_id":"{to}"{errors}}}]"#
                    ),
                )
            }
        };
        format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"{}","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15551111111","phone_number_id":"{ACME_PNID}"}},{value}}},"field":"{field}"}}]}}]}}"#,
            4000 + envelope
        )
    }
}

/// What happens next in the chaotic run.
#[derive(Debug, Clone)]
enum Step {
    /// Post event `i` in envelope `e` (e > 0: a redelivery in other bytes).
    Post(usize, usize),
    /// Kill the server where it stands (no graceful stop) and start it again.
    Crash,
    /// Every event back to `pending` (an operator's replay), then a restart.
    Replay,
}

#[derive(Debug, Clone)]
struct Plan {
    history: Vec<Event>,
    chaos: Vec<Step>,
}

/// Per sender: 1–3 inbound messages, 1–2 replies, each reply with one of the status paths.
fn history() -> impl Strategy<Value = Vec<Event>> {
    let sender = (1usize..=3, prop::collection::vec(0usize..4, 1..=2));
    prop::collection::vec(sender, 2..=3).prop_map(|senders| {
        const PATHS: [&[&str]; 4] = [
            &["sent"],
            &["sent", "delivered"],
            &["sent", "delivered", "read"],
            &["sent", "failed"],
        ];
        let mut events = Vec::new();
        for (s, (inbound, replies)) in senders.into_iter().enumerate() {
            let phone = format!("49176777000{s}");
            let mut ts = T0 + 1000 * s as i64;
            for i in 0..inbound {
                ts += 10;
                events.push(Event::Inbound {
                    from: phone.clone(),
                    wamid: format!("wamid.prop.in.{s}.{i}"),
                    ts,
                });
            }
            for (r, path) in replies.into_iter().enumerate() {
                ts += 10;
                let wamid = format!("wamid.prop.out.{s}.{r}");
                events.push(Event::Echo {
                    to: phone.clone(),
                    wamid: wamid.clone(),
                    ts,
                });
                for status in PATHS[path] {
                    ts += 5;
                    events.push(Event::Status {
                        to: phone.clone(),
                        wamid: wamid.clone(),
                        status,
                        ts,
                    });
                }
            }
        }
        events
    })
}

fn plan() -> impl Strategy<Value = Plan> {
    history()
        .prop_flat_map(|history| {
            let n = history.len();
            // Every event once, some again in new envelopes, all shuffled; then crashes and at
            // most one replay at random places.
            let redeliveries = prop::collection::vec((0..n, 1usize..3), 0..=n);
            let breaks = prop::collection::vec((0..=n, prop::bool::weighted(0.7)), 0..=3);
            (Just(history), redeliveries, breaks).prop_flat_map(
                move |(history, redeliveries, breaks)| {
                    let mut posts: Vec<Step> = (0..n).map(|i| Step::Post(i, 0)).collect();
                    posts.extend(redeliveries.into_iter().map(|(i, e)| Step::Post(i, e)));
                    (Just(history), Just(posts).prop_shuffle(), Just(breaks))
                },
            )
        })
        .prop_map(|(history, posts, breaks)| {
            let mut chaos = posts;
            let mut replayed = false;
            for (at, crash) in breaks {
                let step = if crash || replayed {
                    Step::Crash
                } else {
                    replayed = true;
                    Step::Replay
                };
                chaos.insert(at.min(chaos.len()), step);
            }
            Plan { history, chaos }
        })
}

/// The rows the claims are about, in a stable order, ids and processing times left out.
async fn rows(app: &TestApp) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT c.phone || '|' || m.direction || '|' || m.wamid || '|' || m.message_type || '|' \
         || COALESCE(m.content, '') || '|' || COALESCE(m.status, '') || '|' \
         || COALESCE(m.status_error, '') || '|' || CAST(m.timestamp AS TEXT) \
         FROM messages m JOIN conversations v ON v.id = m.conversation_id \
         JOIN contacts c ON c.id = v.contact_id ORDER BY m.wamid",
        "SELECT c.phone || '|' || v.status || '|' || CAST(v.message_count AS TEXT) || '|' \
         || COALESCE(CAST(v.last_message_at AS TEXT), '') \
         FROM conversations v JOIN contacts c ON c.id = v.contact_id ORDER BY c.phone",
        "SELECT phone || '|' || COALESCE(name, '') || '|' \
         || COALESCE(CAST(last_activity_at AS TEXT), '') || '|' \
         || COALESCE(CAST(last_contact_at AS TEXT), '') FROM contacts ORDER BY phone",
        "SELECT c.phone || '|' || CAST(COUNT(t.id) AS TEXT) FROM conversations v \
         JOIN contacts c ON c.id = v.contact_id \
         LEFT JOIN conversation_state_transitions t ON t.conversation_id = v.id \
         GROUP BY c.phone ORDER BY c.phone",
    ] {
        out.extend(app.strings(sql).await);
        out.push("--".into());
    }
    out
}

async fn settle(app: &TestApp) {
    let accepted = app.count("webhook_events").await;
    app.wait_processed(accepted).await;
}

async fn post(app: &TestApp, body: String) {
    let res = app.post_meta(body, ACME_SECRET).await;
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
}

async fn any_interleaving_of_redeliveries_statuses_replays_and_crashes_ends_in_the_in_order_rows(
    backend: Backend,
) {
    let cases = std::env::var("WAHOOK_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6u32);
    let mut runner = TestRunner::new(Cases {
        cases,
        ..Cases::default()
    });
    let strategy = plan();
    for case in 0..cases {
        let plan = strategy.new_tree(&mut runner).expect("a plan").current();
        let context = format!("case {case} on {backend:?}: {plan:#?}");

        // Reference: each event once, in order.
        let app = TestApp::start(backend).await;
        for event in &plan.history {
            post(&app, event.body(0)).await;
        }
        settle(&app).await;
        let expected = rows(&app).await;
        app.stop().await;

        // The same history as production delivers it.
        let mut app = TestApp::start(backend).await;
        for step in &plan.chaos {
            match step {
                Step::Post(i, envelope) => post(&app, plan.history[*i].body(*envelope)).await,
                Step::Crash => {
                    drop(app.running.take());
                    let (test_db, config) = app.stop().await;
                    app = TestApp::start_on(test_db, config).await;
                }
                Step::Replay => {
                    app.exec("UPDATE webhook_events SET status = 'pending'")
                        .await;
                    let (test_db, config) = app.stop().await;
                    app = TestApp::start_on(test_db, config).await;
                }
            }
        }
        settle(&app).await;
        let got = rows(&app).await;
        app.stop().await;
        assert_eq!(got, expected, "{context}");
    }
}
