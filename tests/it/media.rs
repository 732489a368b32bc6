//! Media: a customer's photo and voice note are fetched from the Graph API (the local fake:
//! media ids, download URLs that work once and expire, corrupt bytes, vanished ids) into the
//! media store — a folder, or S3 on a real S3-protocol server (moto) — and served byte for
//! byte to that workspace only; the agent's model sees the image and hears the transcript.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::OnceLock,
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wahook::{config::MediaStoreKind, store::users::Role};

use crate::{
    agent::{CUSTOMER, agent_app, messages_with, now_ts, wait_outbound},
    api::{call, user_with_token},
    both_backends,
    common::{ACME_PNID, ACME_SECRET, Backend, GLOBEX_PNID, TestApp, test_config},
    fakes::{self, Fake, FakeMedia, sha256_hex},
};

both_backends!(
    a_photo_and_a_voice_note_are_stored_and_served_to_their_workspace_only,
    the_same_files_go_to_s3_on_a_real_s3_server,
    a_corrupt_or_vanished_file_fails_with_its_reason_and_the_conversation_goes_on,
    a_download_cut_by_a_crash_is_fetched_once_after_the_restart,
    the_model_sees_the_photo_and_hears_the_voice_note,
    a_provider_without_transcriptions_keeps_the_marker_and_answers,
    old_files_are_deleted_after_keep_days,
    an_operator_sends_a_file_by_upload_and_by_link_once,
);

pub(crate) const PHOTO_ID: &str = "880001";
pub(crate) const VOICE_ID: &str = "880002";

/// A real PNG (so a model's image part can be decoded).
pub(crate) fn photo() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 32, |x, y| image::Rgb([x as u8 * 4, y as u8 * 8, 90]));
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

pub(crate) fn voice() -> Vec<u8> {
    let mut v = b"OggS\x00\x02".to_vec();
    v.extend((0..4000u32).map(|i| (i * 7 % 251) as u8));
    v
}

/// A customer's image (with the webhook's base64 sha256) or voice note.
pub(crate) fn media_message(wamid: &str, kind: &str, id: &str, sha256: Option<&str>) -> Value {
    let mut file = match kind {
        "image" => json!({"mime_type": "image/png", "id": id, "caption": "the broken part"}),
        "audio" => json!({"mime_type": "audio/ogg; codecs=opus", "id": id, "voice": true}),
        _ => json!({"mime_type": "application/pdf", "id": id, "filename": "invoice.pdf"}),
    };
    if let Some(s) = sha256 {
        file["sha256"] = json!(s);
    }
    let mut m =
        json!({"from": CUSTOMER, "id": wamid, "timestamp": now_ts().to_string(), "type": kind});
    m[kind] = file;
    m
}

pub(crate) fn body_of(msgs: Vec<Value>) -> String {
    messages_with(
        json!([{"profile": {"name": "Ana"}, "wa_id": CUSTOMER}]),
        msgs,
    )
}

fn b64_sha(bytes: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
}

/// The first Acme number has a Graph token; the Graph API is the fake.
pub(crate) async fn media_app(
    backend: Backend,
    graph: &Fake,
    tune: impl FnOnce(&mut wahook::config::Config),
) -> TestApp {
    let base = graph.base.clone();
    TestApp::start_with(backend, move |c| {
        c.graph.base_url = base;
        c.accounts[0].access_token = Some("graph-token".into());
        c.media.retry_base_ms = 50;
        c.media.retry_max_ms = 200;
        tune(c);
    })
    .await
}

pub(crate) async fn wait_media(app: &TestApp, status: &str, n: i64) {
    app.wait_for(
        &format!("SELECT COUNT(*) FROM media WHERE status = '{status}'"),
        n,
    )
    .await;
}

async fn post(app: &TestApp, body: String) {
    let res = app.post_meta(body, ACME_SECRET).await;
    assert_eq!(res.status(), 200);
}

async fn get_bytes(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn a_photo_and_a_voice_note_are_stored_and_served_to_their_workspace_only(backend: Backend) {
    let graph = fakes::graph().await;
    let app = media_app(backend, &graph, |_| {}).await;
    stored_and_served(&app, &graph).await;
    app.stop().await;
}

/// The store's half of the "must show": both files stored byte for byte, shown in the
/// conversation, served to Acme's viewer, refused to Globex and to no token; a redelivered
/// message fetches nothing new.
async fn stored_and_served(app: &TestApp, graph: &Fake) {
    let (photo, voice) = (photo(), voice());
    graph.media(PHOTO_ID, FakeMedia::new(&photo, "image/png"));
    graph.media(VOICE_ID, FakeMedia::new(&voice, "audio/ogg; codecs=opus"));
    let sha = b64_sha(&photo);
    post(
        app,
        body_of(vec![media_message(
            "wamid.photo",
            "image",
            PHOTO_ID,
            Some(&sha),
        )]),
    )
    .await;
    post(
        app,
        body_of(vec![media_message("wamid.voice", "audio", VOICE_ID, None)]),
    )
    .await;
    wait_media(app, "stored", 2).await;
    assert_eq!(
        app.text("SELECT sha256 FROM media WHERE kind = 'image'")
            .await
            .unwrap(),
        sha256_hex(&photo)
    );
    assert_eq!(
        app.scalar("SELECT size FROM media WHERE kind = 'audio'")
            .await,
        voice.len() as i64
    );

    let (_, acme) = user_with_token(app, "acme", "viewer@acme.test", Role::Viewer).await;
    let (_, globex) = user_with_token(app, "globex", "viewer@globex.test", Role::Viewer).await;
    let conversation = app.scalar("SELECT id FROM conversations").await;
    let (status, detail) = call(
        app,
        Method::GET,
        &format!("/api/v1/conversations/{conversation}"),
        Some(&acme),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    let files: Vec<&Value> = detail["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["media"])
        .collect();
    assert_eq!(files.len(), 2);
    for (file, bytes, mime) in [
        (files[0], &photo, "image/png"),
        (files[1], &voice, "audio/ogg; codecs=opus"),
    ] {
        assert_eq!(file["status"], "stored", "{file}");
        assert_eq!(file["sha256"], sha256_hex(bytes));
        assert_eq!(file["size"], bytes.len());
        let url = file["url"].as_str().unwrap();
        let res = get_bytes(app, url, Some(&acme)).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], mime);
        assert_eq!(res.headers()["x-content-type-options"], "nosniff");
        assert_eq!(res.bytes().await.unwrap().as_ref(), bytes.as_slice());
        // Another workspace's valid token, and no token at all.
        assert_eq!(get_bytes(app, url, Some(&globex)).await.status(), 404);
        assert_eq!(get_bytes(app, url, None).await.status(), 401);
    }
    assert_eq!(files[1]["voice"], true);

    // The same message again, in another envelope: it is one message and one fetch.
    let info_gets = graph.count(&format!("GET /v23.0/{PHOTO_ID}"));
    let downloads = graph.count("GET /files/");
    let again = body_of(vec![media_message(
        "wamid.photo",
        "image",
        PHOTO_ID,
        Some(&sha),
    )])
    .replace("\"id\":\"1\"", "\"id\":\"redelivered\"");
    post(app, again).await;
    post(
        app,
        crate::agent::text("wamid.after", "still there?", now_ts(), "x"),
    )
    .await;
    app.wait_processed(4).await;
    assert_eq!(app.count("media").await, 2);
    assert_eq!(graph.count(&format!("GET /v23.0/{PHOTO_ID}")), info_gets);
    assert_eq!(graph.count("GET /files/"), downloads);
}

/// The moto server (`moto_server` from PyPI's moto[server]), started once for the binary.
fn moto() -> Option<&'static str> {
    static MOTO: OnceLock<Option<(String, Child)>> = OnceLock::new();
    MOTO.get_or_init(|| {
        let Ok(bin) = std::env::var("WAHOOK_MOTO_SERVER") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs the S3 tests: WAHOOK_MOTO_SERVER must name moto's moto_server"
            );
            eprintln!("skipped: WAHOOK_MOTO_SERVER is not set (see .ci/run)");
            return None;
        };
        let mut child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("moto_server says where it listens")
                .unwrap();
            if let Some(at) = line.find("Running on http://") {
                break line[at + "Running on ".len()..].trim().to_owned();
            }
        };
        // Keep reading its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Some((url, child))
    })
    .as_ref()
    .map(|(url, _)| url.as_str())
}

async fn the_same_files_go_to_s3_on_a_real_s3_server(backend: Backend) {
    let Some(endpoint) = moto() else { return };
    let bucket = format!("wahook-{}", uuid::Uuid::now_v7().simple());
    let res = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "create bucket: {}", res.status());
    let graph = fakes::graph().await;
    let (endpoint2, bucket2) = (endpoint.to_owned(), bucket.clone());
    let app = media_app(backend, &graph, move |c| {
        c.media.store = MediaStoreKind::S3;
        c.media.s3.bucket = bucket2;
        c.media.s3.endpoint = endpoint2;
        c.media.s3.allow_http = true;
        c.media.s3.region = "us-east-1".into();
        c.media.s3.prefix = "media/".into();
        c.media.s3.access_key_id = Some("test".into());
        c.media.s3.secret_access_key = Some("test".into());
    })
    .await;
    stored_and_served(&app, &graph).await;
    // The objects are in the bucket, content-addressed under the prefix.
    let key = app
        .text("SELECT storage_key FROM media WHERE kind = 'image'")
        .await
        .unwrap();
    assert!(
        key.starts_with("media/") && key.ends_with(&sha256_hex(&photo())),
        "{key}"
    );
    let listing = reqwest::get(format!("{endpoint}/{bucket}?list-type=2"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains(&key), "{listing}");
    // Nothing was written to the folder store.
    let (db, config) = app.stop().await;
    assert_eq!(std::fs::read_dir(db.media.path()).unwrap().count(), 0);
    drop(config);
}

async fn a_corrupt_or_vanished_file_fails_with_its_reason_and_the_conversation_goes_on(
    backend: Backend,
) {
    let graph = fakes::graph().await;
    let app = media_app(backend, &graph, |_| {}).await;
    let good = photo();
    // Corrupt: the bytes are not what the Graph API says they hash to.
    graph.media(
        "770001",
        FakeMedia {
            sha256: Some(sha256_hex(b"something else")),
            ..FakeMedia::new(&good, "image/png")
        },
    );
    // Vanished: the media id is gone.
    graph.media(
        "770002",
        FakeMedia {
            gone: true,
            ..FakeMedia::new(&good, "image/png")
        },
    );
    // Expired: the first URL is dead by the time it is used; a new one works.
    graph.media(
        "770003",
        FakeMedia {
            first_url_expired: true,
            ..FakeMedia::new(&voice(), "audio/ogg")
        },
    );
    // Too large for an image (5 MB).
    graph.media(
        "770004",
        FakeMedia::new(&vec![7u8; 5 * 1024 * 1024 + 1], "image/jpeg"),
    );
    post(
        &app,
        body_of(vec![
            media_message("wamid.corrupt", "image", "770001", None),
            media_message("wamid.vanished", "image", "770002", None),
            media_message("wamid.expired", "audio", "770003", None),
            media_message("wamid.large", "image", "770004", None),
        ]),
    )
    .await;
    wait_media(&app, "failed", 3).await;
    wait_media(&app, "stored", 1).await;
    let error = |wamid: &str| {
        format!(
            "SELECT f.error FROM media f JOIN messages m ON m.id = f.message_id WHERE m.wamid = '{wamid}'"
        )
    };
    let corrupt = app.text(&error("wamid.corrupt")).await.unwrap();
    assert!(
        corrupt.starts_with("sha256 mismatch: the Graph API says"),
        "{corrupt}"
    );
    let vanished = app.text(&error("wamid.vanished")).await.unwrap();
    assert!(vanished.starts_with("media id not found"), "{vanished}");
    let large = app.text(&error("wamid.large")).await.unwrap();
    assert!(large.starts_with("too large"), "{large}");
    // The expired URL was asked for again, once.
    assert_eq!(graph.count("GET /v23.0/770003"), 2);
    assert_eq!(app.text(&error("wamid.expired")).await, None);
    // Nothing held up the conversation: every message is there, and a failed file's message
    // answers 404 with its reason.
    assert_eq!(app.count("messages").await, 4);
    post(
        &app,
        crate::agent::text("wamid.next", "hello?", now_ts(), "n"),
    )
    .await;
    app.wait_processed(2).await;
    let (_, acme) = user_with_token(&app, "acme", "v@acme.test", Role::Viewer).await;
    let id = app
        .scalar("SELECT f.id FROM media f JOIN messages m ON m.id = f.message_id WHERE m.wamid = 'wamid.corrupt'")
        .await;
    let (status, body) = call(
        &app,
        Method::GET,
        &format!("/api/v1/media/{id}"),
        Some(&acme),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sha256 mismatch"),
        "{body}"
    );
    assert!(
        app.metric("wahook_media_jobs_total{outcome=\"failed\"}")
            .await
            >= 3.0
    );
    app.stop().await;
}

async fn a_download_cut_by_a_crash_is_fetched_once_after_the_restart(backend: Backend) {
    let graph = fakes::graph().await;
    let test_db = crate::common::TestDb::new(backend).await;
    let mut config = test_config(&test_db);
    config.graph.base_url = graph.base.clone();
    config.accounts[0].access_token = Some("graph-token".into());
    let photo = photo();
    graph.media(
        PHOTO_ID,
        FakeMedia {
            hold_first: true,
            ..FakeMedia::new(&photo, "image/png")
        },
    );
    let mut app = TestApp::start_on(test_db, config.clone()).await;
    post(
        &app,
        body_of(vec![media_message("wamid.photo", "image", PHOTO_ID, None)]),
    )
    .await;
    graph.wait_for(1, |p, _| p.starts_with("GET /files/")).await;
    // The download hangs; the conversation does not wait for it.
    post(
        &app,
        crate::agent::text("wamid.next", "did you get it?", now_ts(), "n"),
    )
    .await;
    app.wait_processed(2).await;
    assert_eq!(app.count("messages").await, 2);
    assert_eq!(
        app.text("SELECT status FROM media").await.as_deref(),
        Some("pending")
    );
    // kill -9 in the middle of the download.
    drop(app.running.take());
    let (test_db, _) = app.stop().await;
    let app = TestApp::start_on(test_db, config).await;
    wait_media(&app, "stored", 1).await;
    assert_eq!(
        graph.count("GET /files/"),
        2,
        "one cut download, one after the restart"
    );
    assert_eq!(app.scalar("SELECT attempts FROM media").await, 2);
    assert_eq!(app.count("media").await, 1);
    assert_eq!(app.count("messages").await, 2);
    let key = app.text("SELECT storage_key FROM media").await.unwrap();
    let (db, _) = app.stop().await;
    assert_eq!(std::fs::read(db.media.path().join(key)).unwrap(), photo);
}

/// The chat-completions requests the provider got.
fn completions(provider: &Fake) -> Vec<Value> {
    provider
        .requests()
        .into_iter()
        .filter(|(p, _)| p == "/v1/chat/completions")
        .map(|(_, b)| b)
        .collect()
}

async fn the_model_sees_the_photo_and_hears_the_voice_note(backend: Backend) {
    use base64::Engine;
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let (photo, mut voice) = (photo(), voice());
    voice.extend_from_slice(b"VOICE-NOTE-BYTES");
    graph.media(PHOTO_ID, FakeMedia::new(&photo, "image/png"));
    graph.media(VOICE_ID, FakeMedia::new(&voice, "audio/ogg; codecs=opus"));
    let app = agent_app(backend, &provider, &graph, |a| {
        a.vision = true;
        a.transcribe_model = Some("whisper-1".into());
    })
    .await;
    // One burst: the photo with its caption, then the voice note.
    post(
        &app,
        body_of(vec![
            media_message("wamid.photo", "image", PHOTO_ID, None),
            media_message("wamid.voice", "audio", VOICE_ID, None),
        ]),
    )
    .await;
    wait_outbound(&app, "sent", 1).await;
    let requests = completions(&provider);
    assert_eq!(requests.len(), 1);
    let user = requests[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|m| m["role"] == "user")
        .unwrap()
        .clone();
    // Content parts: the text of the burst, then the image as a data: URL of the stored bytes.
    let parts = user["content"].as_array().expect("content parts");
    assert_eq!(parts[0]["type"], "text");
    let text = parts[0]["text"].as_str().unwrap();
    assert!(text.contains("[image] the broken part"), "{text}");
    assert!(
        text.contains("[voice note] I need a new pump, part 1"),
        "{text}"
    );
    assert_eq!(parts[1]["type"], "image_url");
    let url = parts[1]["image_url"]["url"].as_str().unwrap();
    let b64 = url
        .strip_prefix("data:image/png;base64,")
        .expect("a PNG data URL");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        photo
    );
    // The transcription request: multipart, the model, the file named for its format.
    let t: Vec<Value> = provider
        .requests()
        .into_iter()
        .filter(|(p, _)| p == "/v1/audio/transcriptions")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(t.len(), 1);
    assert!(
        t[0]["content_type"]
            .as_str()
            .unwrap()
            .starts_with("multipart/form-data")
    );
    let raw = t[0]["raw"].as_str().unwrap();
    assert!(
        raw.contains("whisper-1") && raw.contains("filename=\"voice.ogg\""),
        "{raw}"
    );
    assert!(raw.contains("VOICE-NOTE-BYTES"));
    // The transcript is kept on the file and shown by the API.
    assert_eq!(
        app.text("SELECT transcript FROM media WHERE kind = 'audio'")
            .await
            .as_deref(),
        Some("I need a new pump, part 1")
    );
    // The next turn's context has the markers and the transcript, not the image again.
    post(
        &app,
        crate::agent::text("wamid.q2", "and the price?", now_ts(), "q2"),
    )
    .await;
    wait_outbound(&app, "sent", 2).await;
    let second = &completions(&provider)[1];
    assert!(
        second["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["content"].is_string())
    );
    let all = second.to_string();
    assert!(
        all.contains("I need a new pump") && !all.contains("base64"),
        "{all}"
    );
    app.stop().await;
}

async fn a_provider_without_transcriptions_keeps_the_marker_and_answers(backend: Backend) {
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    provider.no_transcriptions();
    graph.media(VOICE_ID, FakeMedia::new(&voice(), "audio/ogg"));
    graph.media("880003", FakeMedia::new(&voice(), "audio/ogg"));
    let app = agent_app(backend, &provider, &graph, |a| {
        a.transcribe_model = Some("whisper-1".into());
    })
    .await;
    post(
        &app,
        body_of(vec![media_message("wamid.v1", "audio", VOICE_ID, None)]),
    )
    .await;
    wait_outbound(&app, "sent", 1).await;
    post(
        &app,
        body_of(vec![media_message("wamid.v2", "audio", "880003", None)]),
    )
    .await;
    wait_outbound(&app, "sent", 2).await;
    // Asked once: the 404 is remembered; both turns answered with the marker.
    assert_eq!(provider.count("/v1/audio/transcriptions"), 1);
    let requests = completions(&provider);
    let last = requests[1]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["content"], "[audio]");
    assert_eq!(app.count("media").await, 2);
    app.stop().await;
}

async fn old_files_are_deleted_after_keep_days(backend: Backend) {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
    let graph = fakes::graph().await;
    graph.media(PHOTO_ID, FakeMedia::new(&photo(), "image/png"));
    graph.media(VOICE_ID, FakeMedia::new(&voice(), "audio/ogg"));
    let app = media_app(backend, &graph, |c| {
        c.media.keep_days = 30;
        c.media.retention_every_ms = 50;
        c.media.poll_ms = 50;
    })
    .await;
    post(
        &app,
        body_of(vec![
            media_message("wamid.old", "image", PHOTO_ID, None),
            media_message("wamid.new", "audio", VOICE_ID, None),
        ]),
    )
    .await;
    wait_media(&app, "stored", 2).await;
    let old_key = app
        .text("SELECT storage_key FROM media WHERE kind = 'image'")
        .await
        .unwrap();
    let new_key = app
        .text("SELECT storage_key FROM media WHERE kind = 'audio'")
        .await
        .unwrap();
    let dir = app.test_db.media.path().to_owned();
    assert!(dir.join(&old_key).exists());
    // The photo was stored 31 days ago.
    entity::media::Entity::update_many()
        .col_expr(
            entity::media::Column::StoredAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::days(31)),
        )
        .filter(entity::media::Column::Kind.eq("image"))
        .exec(&app.db)
        .await
        .unwrap();
    wait_media(&app, "deleted", 1).await;
    assert!(!dir.join(&old_key).exists(), "the old file is gone");
    assert!(dir.join(&new_key).exists(), "the new one stays");
    let reason = app
        .text("SELECT error FROM media WHERE kind = 'image'")
        .await
        .unwrap();
    assert!(reason.contains("keep_days = 30"), "{reason}");
    app.stop().await;
}

async fn upload(
    app: &TestApp,
    token: &str,
    query: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> (StatusCode, Value) {
    let res = app
        .client
        .post(app.url(&format!("/api/v1/media?{query}")))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// An operator uploads a photo (it reaches the Graph API byte for byte as multipart), sends it
/// by its media id with a caption (once for one idempotency key), and it comes back into the
/// media store so the conversation shows it; a document goes by an https link. Wrong types,
/// sizes, accounts, roles and links are refused before anything leaves.
async fn an_operator_sends_a_file_by_upload_and_by_link_once(backend: Backend) {
    let graph = fakes::graph().await;
    let app = media_app(backend, &graph, |_| {}).await;
    // The customer writes: the window is open.
    post(
        &app,
        crate::agent::text("wamid.hi", "Can you send me the manual?", now_ts(), "t"),
    )
    .await;
    app.wait_for("SELECT COUNT(*) FROM messages", 1).await;
    let conversation = app.scalar("SELECT id FROM conversations").await;
    let (_, op) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let photo = photo();
    let query = format!("phone_number_id={ACME_PNID}&filename=part.png");

    // Refused before anything leaves.
    let (status, body) = upload(&app, &op, &query, "text/html", b"<script>".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image/png")
    );
    let (status, _) = upload(&app, &viewer, &query, "image/png", photo.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = upload(
        &app,
        &op,
        &format!("phone_number_id={GLOBEX_PNID}"),
        "image/png",
        photo.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another workspace's number");
    let (status, body) = upload(&app, &op, &query, "image/webp", vec![0; 600 * 1024]).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "a sticker over 500 KB: {body}"
    );
    assert!(graph.requests().is_empty(), "nothing reached the Graph API");

    // The upload: multipart with the file's type and bytes, the account's token.
    let (status, up) = upload(&app, &op, &query, "image/png", photo.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{up}");
    assert_eq!(up["type"], "image");
    assert_eq!(up["sha256"], sha256_hex(&photo));
    assert_eq!(up["size"], photo.len());
    let sent_file = graph
        .requests()
        .into_iter()
        .find(|(p, _)| p.ends_with("/media"))
        .unwrap()
        .1;
    assert_eq!(sent_file["token"], "graph-token");
    assert_eq!(sent_file["messaging_product"], "whatsapp");
    assert_eq!(sent_file["type"], "image/png");
    assert_eq!(sent_file["file_type"], "image/png");
    assert_eq!(sent_file["filename"], "part.png");
    assert_eq!(sent_file["sha256"], sha256_hex(&photo));
    let media_id = up["id"].as_str().unwrap().to_owned();

    // Bad sends are refused with the reason.
    let send = |media: Value, key: &str| {
        let (app, op) = (&app, op.clone());
        let body = json!({"conversation_id": conversation, "phone_number_id": ACME_PNID,
            "media": media, "idempotency_key": key});
        async move { call(app, Method::POST, "/api/v1/messages", Some(&op), Some(body)).await }
    };
    for (bad, why) in [
        (
            json!({"type": "image", "link": "http://example.com/a.png"}),
            "https",
        ),
        (
            json!({"type": "image", "link": "https://u:p@example.com/a.png"}),
            "credentials",
        ),
        (json!({"type": "image"}), "either id or link"),
        (
            json!({"type": "image", "id": "../../me"}),
            "letters, digits",
        ),
        (
            json!({"type": "audio", "id": media_id, "caption": "hi"}),
            "no caption",
        ),
        (
            json!({"type": "image", "id": media_id, "filename": "a.png"}),
            "only a document",
        ),
    ] {
        let (status, body) = send(bad.clone(), "bad").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(why), "{bad}: {msg}");
    }
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/messages",
        Some(&op),
        Some(
            json!({"conversation_id": conversation, "phone_number_id": ACME_PNID,
            "text": "hi", "media": {"type": "image", "id": media_id}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "text and media at once");

    // The send, twice with one key: one Graph send.
    let photo_send = json!({"type": "image", "id": media_id, "caption": "Here is the part"});
    let (status, body) = send(photo_send.clone(), "photo-1").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, again) = send(photo_send, "photo-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["state"], "already_recorded");
    let sends: Vec<Value> = graph
        .requests()
        .into_iter()
        .filter(|(p, b)| p.ends_with("/messages") && b.get("status").is_none())
        .map(|(_, b)| b)
        .collect();
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0]["type"], "image");
    assert_eq!(sends[0]["image"]["id"], media_id.as_str());
    assert_eq!(sends[0]["image"]["caption"], "Here is the part");
    assert_eq!(sends[0]["to"], CUSTOMER);

    // A document by link: Meta fetches it, so nothing is stored here.
    let (status, body) = send(
        json!({"type": "document", "link": "https://files.example.com/manual.pdf",
            "filename": "manual.pdf", "caption": "The manual"}),
        "doc-1",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The document's send (not whatever Graph request came last: the media worker fetches
    // the photo above meanwhile).
    let doc = graph
        .requests()
        .into_iter()
        .rev()
        .find(|(p, b)| p.ends_with("/messages") && b["type"] == "document")
        .map(|(_, b)| b)
        .expect("the document was sent");
    assert_eq!(
        doc["document"]["link"],
        "https://files.example.com/manual.pdf"
    );
    assert_eq!(doc["document"]["filename"], "manual.pdf");

    // The photo we sent is fetched back and shown with the outbound message.
    wait_media(&app, "stored", 1).await;
    let (status, detail) = call(
        &app,
        Method::GET,
        &format!("/api/v1/conversations/{conversation}"),
        Some(&viewer),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let sent: Vec<&Value> = detail["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["direction"] == "outbound")
        .collect();
    assert_eq!(sent.len(), 2, "{detail}");
    assert_eq!(sent[0]["message_type"], "image");
    assert_eq!(sent[0]["content"], "Here is the part");
    assert_eq!(sent[0]["media"]["status"], "stored");
    let url = sent[0]["media"]["url"].as_str().unwrap();
    let res = get_bytes(&app, url, Some(&viewer)).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().as_ref(), photo.as_slice());
    assert_eq!(sent[1]["message_type"], "document");
    assert!(sent[1]["media"].is_null(), "{}", sent[1]);
    assert_eq!(
        app.scalar(
            "SELECT COUNT(*) FROM audit_log WHERE action IN ('media.upload', 'message.send_media')"
        )
        .await,
        4,
        "one upload, three sends (one of them already recorded)"
    );
    app.stop().await;
}
