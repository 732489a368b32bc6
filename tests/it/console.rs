//! The web console in a real headless Chromium (Debian's `chromium` and `chromium-driver`),
//! driven through WebDriver: sign in, the users screen to the letter, a conversation built by
//! real signed webhooks, a DLQ retry, and what a viewer does not see. The SQLite run saves a
//! screenshot of each screen to `$WAHOOK_SCREENSHOTS` (default: a temporary directory).

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use reqwest::Method;
use serde_json::{Value, json};
use wahook::store::users::Role;

use crate::{
    api::{call, echo_at, user_with_token},
    both_backends,
    common::{ACME_PNID, ACME_SECRET, Backend, FAILPOINTS, TestApp, meta_text},
};

both_backends!(
    the_console_works_in_a_real_browser,
    a_template_goes_from_the_console_once,
    the_console_shows_a_conversations_files,
    an_operator_finds_a_customer_and_replies_once,
    every_screen_fits_a_phone,
    events_and_the_dlq_link_to_each_other_and_to_conversations,
    an_admin_issues_a_token_in_the_console_and_revokes_it,
);

/// chromedriver on a free port, and a headless Chromium session through it.
struct Browser {
    driver: Child,
    client: Client,
    shots: Option<PathBuf>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver and the Chromium it started share a process group of their own: all of
        // it goes (killing the driver alone left a browser behind per test, each still
        // reconnecting its live stream).
        // SAFETY: kill(2) on the group we created for this driver.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const WAIT: Duration = Duration::from_secs(20);

impl Browser {
    async fn start(shots: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is missing: apt-get install chromium chromium-driver");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--window-size=1280,900"]}),
        );
        // The driver takes a moment to listen: try until it answers (bounded).
        let deadline = tokio::time::Instant::now() + WAIT;
        let client = loop {
            let attempt =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&format!("http://127.0.0.1:{port}"))
                    .await;
            match attempt {
                Ok(c) => break c,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("no WebDriver session: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let shots = shots.then(|| {
            let dir = std::env::var_os("WAHOOK_SCREENSHOTS")
                .map(PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("wahook-screenshots"));
            std::fs::create_dir_all(&dir).unwrap();
            dir
        });
        Self {
            driver,
            client,
            shots,
        }
    }

    async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
    }

    async fn xpath(&self, xpath: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::XPath(xpath))
            .await
            .unwrap_or_else(|e| panic!("no `{xpath}` on the page: {e}"))
    }

    async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    async fn fill(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.unwrap();
        input.send_keys(text).await.unwrap();
    }

    async fn open(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn shot(&self, name: &str) {
        if let Some(dir) = &self.shots {
            let png = self.client.screenshot().await.unwrap();
            std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        }
    }

    async fn sign_in(&self, app: &TestApp, token: &str) {
        self.open(&app.url("/console")).await;
        self.fill("#token", token).await;
        self.click("form.signin button[type=submit]").await;
        self.find("#overview-cards .card").await;
    }
}

fn status_at(recipient: &str, wamid: &str, status: &str, ts: i64) -> String {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15551111111","phone_number_id":"{ACME_PNID}"}},"statuses":[{{"id":"{wamid}","status":"{status}","timestamp":"{ts}","recipient_id":"{recipient}"}}]}}}}]}}]}}"#
    )
}

async fn the_console_works_in_a_real_browser(backend: Backend) {
    let _turn = FAILPOINTS.lock().await;
    let poison = format!("wamid.console.fault.{backend:?}");
    fail::cfg("conversation::apply", &format!("return({poison})")).unwrap();
    let app = TestApp::start_with(backend, |c| {
        c.processing.max_attempts = 2;
        c.processing.backoff_base_ms = 1;
        c.processing.backoff_max_ms = 2;
        c.processing.dlq_backoff_base_ms = 3_600_000;
        c.processing.dlq_poll_ms = 20;
    })
    .await;
    let (_, admin) = user_with_token(&app, "acme", "ada@acme.test", Role::Admin).await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;

    // A conversation made by real signed webhooks: a question, our answer, its read receipt.
    let customer = "4917612340001";
    let t = 1_767_225_600;
    for body in [
        meta_text(
            ACME_PNID,
            customer,
            "wamid.console.in",
            "Do you ship to Berlin?",
        ),
        echo_at(customer, "wamid.console.out", t + 60),
        status_at(customer, "wamid.console.out", "delivered", t + 61),
        status_at(customer, "wamid.console.out", "read", t + 62),
        // They react to our answer and edit their question.
        customer_says(
            customer,
            json!({"id": "wamid.console.r", "timestamp": (t + 70).to_string(), "type": "reaction",
            "reaction": {"message_id": "wamid.console.out", "emoji": "👍"}}),
        ),
        customer_says(
            customer,
            json!({"id": "wamid.console.e", "timestamp": (t + 80).to_string(), "type": "edit",
            "edit": {"original_message_id": "wamid.console.in", "message": {"type": "text", "text": {"body": "Do you ship to Munich?"}}}}),
        ),
        // And write in a group of the business: the group's own conversation.
        customer_says(
            customer,
            json!({"id": "wamid.console.g", "timestamp": (t + 90).to_string(), "type": "text",
            "group_id": "120363000000000099", "text": {"body": "hi team"}}),
        ),
    ] {
        assert_eq!(app.post_meta(body, ACME_SECRET).await.status(), 200);
    }
    // And an event a fault parks in the DLQ.
    let parked = meta_text(ACME_PNID, "4917612340002", &poison, "parked");
    assert_eq!(app.post_meta(parked, ACME_SECRET).await.status(), 200);
    app.wait_for("SELECT COUNT(*) FROM webhook_dlq", 1).await;
    app.wait_for(
        "SELECT COUNT(*) FROM messages WHERE wamid = 'wamid.console.out' AND status = 'read'",
        1,
    )
    .await;
    let conversation = app
        .scalar("SELECT c.id FROM conversations c JOIN contacts k ON k.id = c.contact_id WHERE k.phone = '4917612340001'")
        .await;

    let b = Browser::start(backend == Backend::Sqlite).await;

    // Sign in: a bad token is refused with a message, a good one lands on the overview.
    b.open(&app.url("/console")).await;
    b.fill("#token", "whk_not_a_token").await;
    b.click("form.signin button[type=submit]").await;
    let problem = b.find("form.signin [role=alert]:not([hidden])").await;
    assert!(problem.text().await.unwrap().contains("unknown"));
    b.sign_in(&app, &admin).await;
    assert_eq!(b.count("#overview-cards .card").await, 8);
    let stored = b
        .client
        .execute("return sessionStorage.getItem('wahook.token')", vec![])
        .await
        .unwrap();
    assert_eq!(stored, json!(admin), "the token lives in session storage");
    assert!(
        !b.client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains(&admin)
    );
    b.shot("overview").await;

    // Users: add (the dialog's defaults are viewer and active), toast, new row.
    b.open(&app.url("/console#/users")).await;
    b.find("tr[data-user='ada@acme.test']").await;
    b.click("#add-user").await;
    let role = b.find("dialog[open] select[name=role]").await;
    assert_eq!(role.prop("value").await.unwrap().as_deref(), Some("viewer"));
    let active = b.find("dialog[open] input[name=is_active]").await;
    assert_eq!(
        active.prop("checked").await.unwrap().as_deref(),
        Some("true")
    );
    b.fill("dialog[open] input[name=name]", "Nora").await;
    b.fill("dialog[open] input[name=email]", "not-an-email")
        .await;
    b.click("dialog[open] button[type=submit]").await;
    // The browser checks the email first: nothing is sent, the dialog stays.
    assert_eq!(b.count("dialog[open]").await, 1);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM users").await, 2);
    b.fill("dialog[open] input[name=email]", "nora@acme.test")
        .await;
    b.shot("users-add-dialog").await;
    b.click("dialog[open] button[type=submit]").await;
    let toast = b
        .xpath("//div[@class='toast' and contains(., 'User Nora added')]")
        .await;
    assert!(toast.text().await.unwrap().contains("Nora"));
    b.find("tr[data-user='nora@acme.test']").await;
    assert_eq!(b.count("dialog[open]").await, 0, "the dialog closed");
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM users WHERE email = 'nora@acme.test' AND role = 'viewer' AND is_active")
            .await,
        1
    );
    b.shot("users").await;

    // Edit: the same dialog, pre-filled.
    b.click("button[aria-label='Edit Nora']").await;
    let name = b.find("dialog[open] input[name=name]").await;
    assert_eq!(name.prop("value").await.unwrap().as_deref(), Some("Nora"));
    b.fill("dialog[open] input[name=name]", "Nora Lind").await;
    b.click("dialog[open] button[type=submit]").await;
    b.xpath("//tr[@data-user='nora@acme.test']/td[text()='Nora Lind']")
        .await;

    // Delete: a confirmation, then the user is deactivated (the row stays, inactive).
    b.click("button[aria-label='Deactivate Nora Lind']").await;
    b.find("dialog[open]").await;
    b.shot("users-deactivate-confirm").await;
    b.click("dialog[open] button[type=submit]").await;
    b.xpath("//tr[@data-user='nora@acme.test']//span[text()='inactive']")
        .await;
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM users WHERE email = 'nora@acme.test' AND NOT is_active")
            .await,
        1
    );
    // Escape closes a dialog.
    b.click("#add-user").await;
    b.find("dialog[open]").await;
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{e00c}")
        .await
        .unwrap();
    assert_eq!(b.count("dialog[open]").await, 0, "Escape closed the dialog");

    // A conversation from real webhooks: its messages in order, with their ticks; the window
    // (the question is from 2026-01-01) is closed.
    b.open(&app.url("/console#/conversations")).await;
    b.click(&format!("tr[data-conversation='{conversation}'] a"))
        .await;
    b.find("#thread").await;
    let wamids = b
        .client
        .execute(
            "return [...document.querySelectorAll('#thread .msg')].map(m => m.dataset.wamid)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(wamids, json!(["wamid.console.in", "wamid.console.out"]));
    b.find("article[data-wamid='wamid.console.out'] .tick[data-status='read']")
        .await;
    // The reaction under our answer, the question edited (not two more bubbles).
    b.xpath("//article[@data-wamid='wamid.console.out']//span[@class='reaction' and text()='👍']")
        .await;
    b.xpath("//article[@data-wamid='wamid.console.in']/div[text()='Do you ship to Munich?']")
        .await;
    b.find("article[data-wamid='wamid.console.in'] .mark.edited")
        .await;
    b.find("#window-closed").await;
    b.shot("conversation").await;
    // The group's conversation names who wrote each message.
    app.wait_for(
        "SELECT COUNT(*) FROM contacts WHERE phone = 'group:120363000000000099'",
        1,
    )
    .await;
    let group = app
        .scalar("SELECT c.id FROM conversations c JOIN contacts k ON k.id = c.contact_id WHERE k.phone = 'group:120363000000000099'")
        .await;
    b.open(&app.url(&format!("/console#/conversations/{group}")))
        .await;
    b.xpath(&format!(
        "//article[@data-wamid='wamid.console.g']//span[@class='sender' and starts-with(text(), 'Test User ({customer})')]"
    ))
    .await;
    b.xpath("//h1[starts-with(text(), 'Group ')]").await;
    b.open(&app.url(&format!("/console#/conversations/{conversation}")))
        .await;
    b.find("#thread").await;
    // Hand it to a person, then give it back.
    b.xpath("//button[text()='Hand to a person']")
        .await
        .click()
        .await
        .unwrap();
    b.xpath("//span[@id='conversation-state-badge' and text()='human']")
        .await;
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM conversations WHERE id = {conversation} AND status = 'human'"
        ))
        .await,
        1
    );
    b.xpath("//button[text()='Give back to the agent']")
        .await
        .click()
        .await
        .unwrap();
    b.xpath("//span[@id='conversation-state-badge' and text()='open']")
        .await;

    // The DLQ: the fault is removed, the row is retried from the console and ends resolved.
    fail::remove("conversation::apply");
    let dlq_id = app.scalar("SELECT id FROM webhook_dlq").await;
    b.open(&app.url("/console#/dlq")).await;
    b.find(&format!("tr[data-dlq='{dlq_id}']")).await;
    b.shot("dlq").await;
    b.find("#dlq-status option[value='']")
        .await
        .click()
        .await
        .unwrap();
    b.xpath(&format!(
        "//tr[@data-dlq='{dlq_id}']//button[text()='Retry']"
    ))
    .await
    .click()
    .await
    .unwrap();
    b.xpath(&format!(
        "//tr[@data-dlq='{dlq_id}']//span[@data-status and text()='resolved']"
    ))
    .await;
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM messages WHERE wamid = '{poison}'"
        ))
        .await,
        1
    );

    // The other screens render (and are pictured).
    b.open(&app.url("/console#/events")).await;
    b.find("#event-status").await;
    b.find("table").await;
    b.shot("events").await;
    b.open(&app.url("/console#/leads")).await;
    b.find("#lead-filter").await;
    b.find("tr[data-contact]").await;
    b.shot("leads").await;

    // A viewer sees no button it cannot use.
    b.click("#sign-out").await;
    b.find("#token").await;
    b.sign_in(&app, &viewer).await;
    b.open(&app.url("/console#/users")).await;
    b.find("tr[data-user='ada@acme.test']").await;
    assert_eq!(b.count("#add-user").await, 0);
    assert_eq!(b.count("button[aria-label^='Edit']").await, 0);
    assert_eq!(b.count("button[aria-label^='Deactivate']").await, 0);
    b.open(&app.url(&format!("/console#/conversations/{conversation}")))
        .await;
    b.find("#thread").await;
    assert_eq!(b.count("main button").await, 0);
    b.open(&app.url("/console#/leads")).await;
    b.find("tr[data-contact]").await;
    assert_eq!(b.count("button[aria-label^='Edit lead']").await, 0);
    b.open(&app.url("/console#/dlq")).await;
    b.find("#dlq-status").await;
    assert_eq!(b.count("#bulk-retry").await, 0);
    // The API agrees: the viewer's token cannot act either.
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/dlq/retry",
        Some(&viewer),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 403);

    b.client.clone().close().await.unwrap();
    drop(b);
    app.stop().await;
}

/// A Meta body with one message object from `customer`.
/// A lead whose window closed gets a template from the conversation screen: an approved
/// template picked, its placeholders filled (the preview shows the text), sent once however
/// often the button is pressed; the templates screen shows status and quality.
async fn a_template_goes_from_the_console_once(backend: Backend) {
    use crate::fakes::{self, is_template};
    let graph = fakes::graph().await;
    let app = crate::templates::template_app(backend, &graph).await;
    crate::templates::wait_catalog(&app, 5).await;
    let customer = "4917612340011";
    assert_eq!(
        app.post_meta(
            meta_text(
                ACME_PNID,
                customer,
                "wamid.console.t1",
                "Any news on my order?"
            ),
            ACME_SECRET
        )
        .await
        .status(),
        200
    );
    app.wait_processed(1).await;
    let conversation = app.scalar("SELECT id FROM conversations").await;
    let (_, operator) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let b = Browser::start(backend == Backend::Sqlite).await;
    b.sign_in(&app, &operator).await;
    b.open(&app.url(&format!("/console#/conversations/{conversation}")))
        .await;
    b.find("#window-closed").await;
    b.find("#template-composer").await;
    b.xpath("//select[@id='template-pick']/option[contains(., 'reengage')]")
        .await
        .click()
        .await
        .unwrap();
    b.fill("#template-composer input[data-ph='1']", "Ana").await;
    b.fill("#template-composer input[data-ph='2']", "the blue bike")
        .await;
    let preview = b.find("#template-preview").await.text().await.unwrap();
    assert_eq!(preview, "Hi Ana, still interested in the blue bike?");
    b.shot("conversation-template").await;
    // A double click: one send.
    let send = b.find("#template-send").await;
    send.click().await.unwrap();
    let _ = send.click().await;
    graph.wait_for(1, is_template).await;
    b.xpath("//article[contains(@class,'outbound') and contains(., 'still interested in the blue bike')]")
        .await;
    let sent: Vec<_> = graph
        .requests()
        .into_iter()
        .filter(|(p, v)| is_template(p, v))
        .collect();
    assert_eq!(sent.len(), 1, "one send");
    assert_eq!(sent[0].1["to"], customer);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM outbound_messages WHERE state = 'sent' AND turn_key LIKE 'api:%:console-%'").await,
        1
    );
    // The templates screen: status and quality at a glance.
    b.open(&app.url("/console#/templates")).await;
    b.find("tr[data-template='spring_sale:en_US'] .badge.status-PAUSED")
        .await;
    b.find("tr[data-template='reengage:en_US'] .badge.quality-GREEN")
        .await;
    assert_eq!(b.count("#templates-sync").await, 0, "syncing is for admins");
    b.shot("templates").await;
    drop(b);
    app.stop().await;
}

fn customer_says(customer: &str, mut message: Value) -> String {
    message["from"] = json!(customer);
    json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15551111111", "phone_number_id": ACME_PNID},
        "contacts": [{"profile": {"name": "Test User"}, "wa_id": customer}],
        "messages": [message]}}]}]})
    .to_string()
}

/// Issue 28: the photo inline (decoded by the browser), the voice note with a player, the
/// document as a named download, a failed file with its reason, a location with a map link.
async fn the_console_shows_a_conversations_files(backend: Backend) {
    use crate::{
        fakes::{self, FakeMedia},
        media::{body_of, media_app, media_message, photo, voice, wait_media},
    };
    let graph = fakes::graph().await;
    graph.media("990001", FakeMedia::new(&photo(), "image/png"));
    graph.media("990002", FakeMedia::new(&voice(), "audio/ogg"));
    graph.media(
        "990003",
        FakeMedia::new(b"%PDF-1.4 invoice", "application/pdf"),
    );
    graph.media(
        "990004",
        FakeMedia {
            gone: true,
            ..FakeMedia::new(b"x", "image/jpeg")
        },
    );
    let app = media_app(backend, &graph, |_| {}).await;
    let mut location = media_message("wamid.c.loc", "text", "0", None);
    location["type"] = json!("location");
    location["location"] = json!({"latitude": 52.52, "longitude": 13.405, "name": "Shop"});
    let body = body_of(vec![
        media_message("wamid.c.photo", "image", "990001", None),
        media_message("wamid.c.voice", "audio", "990002", None),
        media_message("wamid.c.doc", "document", "990003", None),
        media_message("wamid.c.gone", "image", "990004", None),
        location,
    ]);
    assert_eq!(app.post_meta(body, ACME_SECRET).await.status(), 200);
    wait_media(&app, "stored", 3).await;
    wait_media(&app, "failed", 1).await;
    let conversation = app.scalar("SELECT id FROM conversations").await;
    let (_, viewer) = user_with_token(&app, "acme", "vera@acme.test", Role::Viewer).await;
    let b = Browser::start(backend == Backend::Sqlite).await;
    b.sign_in(&app, &viewer).await;
    b.open(&app.url(&format!("/console#/conversations/{conversation}")))
        .await;
    b.find("article[data-wamid='wamid.c.photo'] .media img.photo")
        .await;
    // Decoded: the bytes the browser got are an image of the photo's size.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let w = b
            .client
            .execute(
                "const i = document.querySelector(\"article[data-wamid='wamid.c.photo'] img.photo\"); return i ? i.naturalWidth : 0",
                vec![],
            )
            .await
            .unwrap();
        if w == json!(64) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the photo did not load: {w}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.find("article[data-wamid='wamid.c.voice'] .media audio[controls]")
        .await;
    let link = b
        .find("article[data-wamid='wamid.c.doc'] .media a.download")
        .await;
    assert_eq!(
        link.attr("download").await.unwrap().as_deref(),
        Some("invoice.pdf")
    );
    let failed = b
        .find("article[data-wamid='wamid.c.gone'] .media.failed .mark.failed")
        .await
        .text()
        .await
        .unwrap();
    assert!(failed.contains("media id not found"), "{failed}");
    let map = b.find("article[data-wamid='wamid.c.loc'] a.map").await;
    assert!(
        map.attr("href")
            .await
            .unwrap()
            .unwrap()
            .contains("mlat=52.52")
    );
    b.shot("conversation-media").await;
    drop(b);
    app.stop().await;
}

/// Issue 29's heart: an operator finds a customer by phone as people write it, reads who wrote
/// each line (the customer, the agent), replies from the console (a double click: one Graph
/// send), and sees the agent keep quiet after that reply, with why.
async fn an_operator_finds_a_customer_and_replies_once(backend: Backend) {
    use crate::{
        agent::{agent_app, messages_with, now_ts, post, text, wait_outbound},
        fakes,
    };
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = agent_app(backend, &provider, &graph, |_| {}).await;
    post(
        &app,
        text("wamid.ana.1", "is the blue bike in stock?", now_ts(), "a1"),
    )
    .await;
    wait_outbound(&app, "sent", 1).await;
    // Another customer, so the search has something to leave out.
    post(
        &app,
        messages_with(
            json!([{"profile": {"name": "Bruno"}, "wa_id": "5511999990000"}]),
            vec![json!({"from": "5511999990000", "id": "wamid.bruno.1", "timestamp": now_ts().to_string(),
                "type": "text", "text": {"body": "hola"}})],
        ),
    )
    .await;
    wait_outbound(&app, "sent", 2).await;
    let (op_id, op) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    app.exec("UPDATE users SET name = 'Otto' WHERE email = 'otto@acme.test'")
        .await;
    let b = Browser::start(backend == Backend::Sqlite).await;
    b.sign_in(&app, &op).await;
    b.open(&app.url("/console#/conversations")).await;
    b.find("tr[data-conversation]").await;
    assert_eq!(b.count("tr[data-conversation]").await, 2);
    // The phone as a person types it.
    b.fill("#conversation-search", "+49 151 123").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.count("tr[data-conversation]").await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the search did not narrow the list"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.click("tr[data-conversation] a").await;
    // Who wrote what.
    b.find("article[data-wamid='wamid.ana.1'] .author[data-author='customer']")
        .await;
    b.xpath("//article[contains(@class,'outbound')]//span[@data-author='agent']")
        .await;
    // Otto takes it: assigned, and the list says so.
    b.find(&format!("#conversation-assign option[value='{op_id}']"))
        .await
        .click()
        .await
        .unwrap();
    app.wait_for(
        &format!("SELECT COUNT(*) FROM conversations WHERE assignee_id = {op_id}"),
        1,
    )
    .await;
    // The reply: a double click sends once.
    b.fill("#reply-text", "Yes! Otto here, I keep one for you.")
        .await;
    b.shot("conversation-reply").await;
    let send = b.find("#reply-send").await;
    send.click().await.unwrap();
    let _ = send.click().await;
    let mine = |_: &str, v: &Value| v["text"]["body"] == "Yes! Otto here, I keep one for you.";
    graph.wait_for(1, mine).await;
    b.xpath("//article[contains(@class,'outbound')]//span[@data-author='operator' and contains(., 'Otto')]")
        .await;
    assert_eq!(
        graph.requests().iter().filter(|(p, v)| mine(p, v)).count(),
        1,
        "one send"
    );
    // The customer answers the person: the message appears by itself (the live stream, no
    // reload), the agent keeps quiet, and the timeline says why.
    b.find("#live[data-state='live']").await;
    b.fill("#reply-text", "a draft in progress").await;
    post(
        &app,
        text("wamid.ana.2", "great, thanks Otto", now_ts(), "a2"),
    )
    .await;
    b.find("article[data-wamid='wamid.ana.2']").await;
    wait_outbound(&app, "skipped", 1).await;
    // The reason in words (found by its text: the live refresh may draw the timeline again
    // between a find and a read).
    b.xpath(
        "//div[contains(@class,'turn') and @data-reason='human_replied' and contains(., 'a person replied lately')]",
    )
    .await;
    assert_eq!(
        b.find("#reply-text")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("a draft in progress"),
        "the draft survives the live refreshes"
    );
    // The agent's panel: its turns here, one kept quiet (updated live).
    b.xpath("//details[@id='agent-panel']/summary[contains(., '1 kept quiet')]")
        .await;
    b.shot("conversation-authors").await;
    assert_eq!(provider.requests().len(), 2, "the agent's two answers only");
    app.stop().await;
}

/// At 390 px (a phone) no screen is wider than the viewport: no sideways page scroll, tables
/// read as cards, the header keeps "Sign out" on the screen and stays short.
async fn every_screen_fits_a_phone(backend: Backend) {
    use crate::{
        agent::{agent_app, now_ts, post, text, wait_outbound},
        fakes,
    };
    let (provider, graph) = (fakes::provider().await, fakes::graph().await);
    let app = agent_app(backend, &provider, &graph, |_| {}).await;
    post(
        &app,
        text(
            "wamid.phone.1.with.a.rather.long.identifier.that.could.push.a.table.wide",
            "Hello! Do you have the blue bike in size M? I would like to pick it up on Saturday morning.",
            now_ts(),
            "p1",
        ),
    )
    .await;
    wait_outbound(&app, "sent", 1).await;
    let conversation = app.scalar("SELECT id FROM conversations").await;
    let (_, admin) = user_with_token(&app, "acme", "ada@acme.test", Role::Admin).await;
    let b = Browser::start(backend == Backend::Sqlite).await;
    b.client.set_window_size(390, 844).await.unwrap();
    b.sign_in(&app, &admin).await;
    for (screen, ready) in [
        ("overview", "#overview-cards .card"),
        ("events", "main table, main [data-empty]"),
        ("dlq", "main table, main [data-empty]"),
        ("conversations", "tr[data-conversation]"),
        (
            &format!("conversations/{conversation}") as &str,
            "#reply-text",
        ),
        ("leads", "main table, main [data-empty]"),
        ("templates", "main table, main [data-empty], main h1"),
        ("users", "main table"),
    ] {
        b.open(&app.url(&format!("/console#/{screen}"))).await;
        b.find(ready).await;
        let size = b
            .client
            .execute(
                "const s = document.getElementById('sign-out').getBoundingClientRect(); \
                 return [document.documentElement.scrollWidth, window.innerWidth, \
                 document.querySelector('header').getBoundingClientRect().height, s.right];",
                vec![],
            )
            .await
            .unwrap();
        let [page, viewport, header, sign_out] = [0, 1, 2, 3].map(|i| size[i].as_f64().unwrap());
        assert!(
            page <= viewport,
            "{screen}: the page is {page} px wide on a {viewport} px screen"
        );
        assert!(header <= 100.0, "{screen}: the header is {header} px high");
        assert!(
            sign_out <= viewport,
            "{screen}: Sign out is off the screen ({sign_out} px)"
        );
        let name = if screen.contains('/') {
            "conversation"
        } else {
            screen
        };
        b.shot(&format!("phone-{name}")).await;
    }
    app.stop().await;
}

/// Deep links, the header's search, the event's type, correlation id, headers and conversation,
/// its DLQ row (a last park is `dead`: no retry), and a replay that asks first.
async fn events_and_the_dlq_link_to_each_other_and_to_conversations(backend: Backend) {
    let _turn = FAILPOINTS.lock().await;
    let poison = format!("wamid.links.fault.{backend:?}");
    fail::cfg("conversation::apply", &format!("return({poison})")).unwrap();
    let app = TestApp::start_with(backend, |c| {
        c.processing.max_attempts = 1;
        c.processing.backoff_base_ms = 1;
        c.processing.backoff_max_ms = 2;
        c.processing.dlq_max_attempts = 1;
        c.processing.dlq_poll_ms = 20;
    })
    .await;
    let (_, op) = user_with_token(&app, "acme", "otto@acme.test", Role::Operator).await;
    let body = meta_text(
        ACME_PNID,
        "4917612340005",
        "wamid.links.ok",
        "where is my order?",
    );
    assert_eq!(app.post_meta(body, ACME_SECRET).await.status(), 200);
    let parked = meta_text(ACME_PNID, "4917612340006", &poison, "parked for good");
    assert_eq!(app.post_meta(parked, ACME_SECRET).await.status(), 200);
    app.wait_for(
        "SELECT COUNT(*) FROM webhook_dlq WHERE resolution_status = 'dead'",
        1,
    )
    .await;
    fail::remove("conversation::apply");
    app.wait_for(
        "SELECT COUNT(*) FROM messages WHERE wamid = 'wamid.links.ok'",
        1,
    )
    .await;
    let event = app
        .scalar("SELECT event_id FROM messages WHERE wamid = 'wamid.links.ok'")
        .await;
    let conversation = app
        .scalar("SELECT conversation_id FROM messages WHERE wamid = 'wamid.links.ok'")
        .await;
    let correlation = app
        .text(&format!(
            "SELECT correlation_id FROM webhook_events WHERE id = {event}"
        ))
        .await
        .unwrap();
    let dlq = app.scalar("SELECT id FROM webhook_dlq").await;
    let b = Browser::start(backend == Backend::Sqlite).await;
    b.sign_in(&app, &op).await;

    // A deep link opens the event: its type, correlation id, headers and conversation.
    b.open(&app.url(&format!("/console#/events/{event}"))).await;
    let id = b.find("#event-correlation").await.text().await.unwrap();
    assert_eq!(id, correlation);
    b.find(&format!("tr[data-event='{event}'] td.type")).await;
    let kind = b
        .find(&format!("tr[data-event='{event}'] td.type"))
        .await
        .text()
        .await
        .unwrap();
    assert!(kind.contains("messages"), "the event's type: {kind}");
    b.xpath("//section//pre[@aria-label='Headers']").await;
    b.click(&format!(
        "#event-conversations a[href='#/conversations/{conversation}']"
    ))
    .await;
    b.find("article[data-wamid='wamid.links.ok']").await;

    // Replay asks first; cancelling replays nothing.
    b.open(&app.url(&format!("/console#/events/{event}"))).await;
    b.click("#event-replay").await;
    b.find("dialog[open]").await;
    b.shot("event-replay-confirm").await;
    b.xpath("//dialog[@open]//button[text()='Cancel']")
        .await
        .click()
        .await
        .unwrap();
    // The dialog is gone and nothing was replayed.
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.count("dialog[open]").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dialog stays open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'events.replay'")
            .await,
        0,
        "cancelled: no replay"
    );
    // Confirmed: one replay.
    b.click("#event-replay").await;
    b.xpath("//dialog[@open]//button[text()='Replay']")
        .await
        .click()
        .await
        .unwrap();
    app.wait_for(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'events.replay'",
        1,
    )
    .await;

    // The dead row: `dead`, no retry, a link to its event.
    b.open(&app.url(&format!("/console#/dlq/{dlq}"))).await;
    b.xpath(&format!(
        "//tr[@data-dlq='{dlq}']//span[@data-status and text()='dead']"
    ))
    .await;
    assert_eq!(
        b.count(&format!("tr[data-dlq='{dlq}'] button.secondary"))
            .await,
        1,
        "Resolve only, no Retry"
    );
    b.shot("dlq-dead").await;
    b.click(&format!("tr[data-dlq='{dlq}'] td a")).await;
    b.find("#event-dlq").await;

    // The header's search: a wamid finds its conversation, the correlation id its event.
    b.fill("#global-search-input", "wamid.links.ok").await;
    b.find("#global-search-input")
        .await
        .send_keys("\u{E007}")
        .await
        .unwrap();
    b.find(&format!("tr[data-conversation='{conversation}']"))
        .await;
    b.fill("#global-search-input", &correlation).await;
    b.find("#global-search-input")
        .await
        .send_keys("\u{E007}")
        .await
        .unwrap();
    b.find(&format!("tr[data-event='{event}']")).await;
    b.shot("search").await;
    app.stop().await;
}

/// A user added in the console can sign in without the CLI: an admin issues a token (shown
/// once, with a copy button) and revokes it, and the API agrees at once.
async fn an_admin_issues_a_token_in_the_console_and_revokes_it(backend: Backend) {
    use wahook::store::{
        accounts,
        users::{self, NewUser},
    };
    let app = TestApp::start(backend).await;
    let (_, admin) = user_with_token(&app, "acme", "ada@acme.test", Role::Admin).await;
    let ws = accounts::ensure_workspace(&app.db, "acme").await.unwrap();
    users::create(
        &app.db,
        NewUser {
            workspace_id: ws,
            name: "Nina",
            email: "nina@acme.test",
            role: Role::Operator,
            is_active: true,
        },
        "test",
    )
    .await
    .unwrap();
    let b = Browser::start(backend == Backend::Sqlite).await;
    b.sign_in(&app, &admin).await;
    b.open(&app.url("/console#/users")).await;
    b.click("button[aria-label='Tokens of Nina']").await;
    b.find("dialog[open] [data-empty]").await;
    b.fill("#token-name", "laptop").await;
    b.xpath("//dialog[@open]//button[text()='Issue token']")
        .await
        .click()
        .await
        .unwrap();
    let token = b
        .find("#new-token")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    b.find("#copy-token").await;
    b.find("dialog[open] tr[data-token]").await;
    b.shot("users-token").await;
    let me = |token: String| {
        let app = &app;
        async move { call(app, Method::GET, "/api/v1/me", Some(&token), None).await }
    };
    let (status, who) = me(token.clone()).await;
    assert_eq!(status, 200, "{who}");
    assert!(
        who["actor"].as_str().unwrap().contains("nina@acme.test"),
        "{who}"
    );
    // Revoked from the same dialog: refused at once.
    b.xpath("//dialog[@open]//tr[@data-token]//button[text()='Revoke']")
        .await
        .click()
        .await
        .unwrap();
    b.xpath("//dialog[@open]//tr[@data-token]//span[text()='revoked']")
        .await;
    let (status, _) = me(token).await;
    assert_eq!(status, 401);
    app.stop().await;
}
