//! Message templates: what a template asks for (its placeholders), whether a send gives
//! exactly that, the text it renders to (so the conversation reads naturally), the Graph API's
//! `components` for the send, and the catalog sync from the Graph API.
//!
//! Every check here runs before anything leaves: a paused template, a missing or extra
//! parameter, a marketing template to a contact who opted out are refused with no request.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::graph::{Graph, SendError};
use crate::store::templates::{self as store, Template};

/// What a template needs filled in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Placeholders {
    /// The body's placeholders: `1`, `2`, … (positional) or their names (named).
    pub body: Vec<String>,
    /// The header's text placeholders.
    pub header: Vec<String>,
    /// `IMAGE`, `VIDEO`, `DOCUMENT` or `LOCATION`: the header needs media (`header.id` or
    /// `header.link`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_media: Option<String>,
    /// Indexes of URL buttons whose URL has a placeholder (each needs `buttons[].text`).
    pub url_buttons: Vec<usize>,
}

/// A template send as an operator asks for it (`POST /api/v1/messages` `template`).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRequest {
    #[schema(min_length = 1, max_length = 512)]
    pub name: String,
    /// The template's language code (`en_US`).
    #[schema(min_length = 1, max_length = 32)]
    pub language: String,
    /// The body's values: a list for a positional template, an object for a named one.
    #[serde(default)]
    pub parameters: Option<Parameters>,
    /// The header's media (`{"type":"image","id":…}` or `{"link":…}`) or text (`{"text":…}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub header: Option<Value>,
    /// Values for URL buttons (`{"index":1,"text":"slug"}`) and quick-reply payloads
    /// (`{"index":0,"payload":"yes"}`).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub buttons: Option<Vec<Value>>,
}

/// A template's body values.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Parameters {
    /// Positional: `{{1}}`, `{{2}}`, … in order.
    List(Vec<String>),
    /// Named: `{{first_name}}` → `{"first_name": "Jo"}`.
    Named(BTreeMap<String, String>),
}

impl Parameters {
    /// The same values with `f` applied to each.
    pub fn map(&self, f: impl Fn(&str) -> String) -> Self {
        match self {
            Parameters::List(l) => Parameters::List(l.iter().map(|v| f(v)).collect()),
            Parameters::Named(m) => {
                Parameters::Named(m.iter().map(|(k, v)| (k.clone(), f(v))).collect())
            }
        }
    }
}

/// Why a template send is refused before it leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    /// The template is not `APPROVED` (its status).
    NotApproved(String),
    /// The parameters do not match its placeholders.
    Parameters(String),
    /// A marketing template to a contact who asked to stop marketing messages.
    OptedOut,
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotFound => "template_not_found",
            Refusal::NotApproved(_) => "template_not_approved",
            Refusal::Parameters(_) => "template_parameters",
            Refusal::OptedOut => "marketing_opted_out",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::NotFound => "no such template in this language for the number's WhatsApp Business Account (sync the catalog: POST /api/v1/templates/sync)".into(),
            Refusal::NotApproved(s) => format!("the template is {s}, not APPROVED: it cannot be sent"),
            Refusal::Parameters(m) => m.clone(),
            Refusal::OptedOut => "the contact stopped marketing messages: a marketing template is never sent to them".into(),
        }
    }
}

/// A checked template send: the Graph API's `template` object and the text it renders to.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub payload: Value,
    pub rendered: String,
    pub category: String,
}

fn components(t: &Template) -> Vec<Value> {
    serde_json::from_str::<Value>(&t.components)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn kind(c: &Value) -> String {
    c["type"].as_str().unwrap_or_default().to_ascii_uppercase()
}

/// The `{{…}}` names in a text, in order of first appearance.
fn names_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim().to_owned();
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
        rest = &after[end + 2..];
    }
    out
}

pub fn placeholders(t: &Template) -> Placeholders {
    let mut p = Placeholders::default();
    for c in components(t) {
        match kind(&c).as_str() {
            "BODY" => p.body = names_in(c["text"].as_str().unwrap_or_default()),
            "HEADER" => {
                let format = c["format"].as_str().unwrap_or("TEXT").to_ascii_uppercase();
                if format == "TEXT" {
                    p.header = names_in(c["text"].as_str().unwrap_or_default());
                } else {
                    p.header_media = Some(format);
                }
            }
            "BUTTONS" => {
                for (i, b) in c["buttons"].as_array().into_iter().flatten().enumerate() {
                    let url = b["url"].as_str().unwrap_or_default();
                    if b["type"]
                        .as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case("URL"))
                        && !names_in(url).is_empty()
                    {
                        p.url_buttons.push(i);
                    }
                }
            }
            _ => {}
        }
    }
    p
}

fn named(t: &Template) -> bool {
    t.parameter_format.eq_ignore_ascii_case("NAMED")
}

/// The values given, by placeholder name (`1`, `2`, … for a list).
fn values_of(
    parameters: Option<&Parameters>,
    named: bool,
) -> Result<BTreeMap<String, String>, String> {
    let out: BTreeMap<String, String> = match parameters {
        None => BTreeMap::new(),
        Some(Parameters::List(list)) if !named => list
            .iter()
            .enumerate()
            .map(|(i, v)| ((i + 1).to_string(), v.clone()))
            .collect(),
        Some(Parameters::Named(map)) if named => map.clone(),
        // An empty list or object says "no parameters" either way.
        Some(Parameters::List(l)) if l.is_empty() => BTreeMap::new(),
        Some(Parameters::Named(m)) if m.is_empty() => BTreeMap::new(),
        Some(Parameters::List(_)) => {
            return Err(
                "the template has named parameters: give them as an object {name: value}".into(),
            );
        }
        Some(Parameters::Named(_)) => {
            return Err("the template has positional parameters: give them as a list".into());
        }
    };
    for (k, v) in &out {
        if v.trim().is_empty() {
            return Err(format!("parameter {k} is empty"));
        }
        if v.chars().count() > 1024 {
            return Err(format!("parameter {k} is longer than 1024 characters"));
        }
    }
    Ok(out)
}

fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = text.to_owned();
    for (k, v) in values {
        out = out.replace(&format!("{{{{{k}}}}}", k = k), v);
    }
    out
}

fn fmt_names(names: &[String], named: bool) -> String {
    names
        .iter()
        .map(|n| {
            if named {
                n.clone()
            } else {
                format!("{{{{{n}}}}}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a send against the template (status, parameters, the contact's opt-out) and builds
/// what goes to the Graph API. Nothing is sent here.
pub fn prepare(
    t: Option<&Template>,
    req: &TemplateRequest,
    opted_out: bool,
) -> Result<Prepared, Refusal> {
    let t = t.ok_or(Refusal::NotFound)?;
    if !t.status.eq_ignore_ascii_case("APPROVED") {
        return Err(Refusal::NotApproved(t.status.clone()));
    }
    if opted_out && t.category.eq_ignore_ascii_case("MARKETING") {
        return Err(Refusal::OptedOut);
    }
    let named = named(t);
    let p = placeholders(t);
    let values = values_of(req.parameters.as_ref(), named).map_err(Refusal::Parameters)?;
    let wanted: BTreeSet<&String> = p.body.iter().collect();
    let given: BTreeSet<&String> = values.keys().collect();
    let missing: Vec<String> = wanted.difference(&given).map(|s| (*s).clone()).collect();
    let extra: Vec<String> = given.difference(&wanted).map(|s| (*s).clone()).collect();
    if !missing.is_empty() || !extra.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing {}", fmt_names(&missing, named)));
        }
        if !extra.is_empty() {
            parts.push(format!("extra {}", fmt_names(&extra, named)));
        }
        return Err(Refusal::Parameters(format!(
            "the parameters do not match the template's placeholders ({}): {}",
            if p.body.is_empty() {
                "it has none".to_owned()
            } else {
                fmt_names(&p.body, named)
            },
            parts.join("; ")
        )));
    }

    let mut out: Vec<Value> = Vec::new();
    let mut rendered: Vec<String> = Vec::new();
    // Header.
    let header = req.header.as_ref().filter(|h| !h.is_null());
    if let Some(format) = &p.header_media {
        let h = header.ok_or_else(|| {
            Refusal::Parameters(format!(
                "the template's header is {format}: give header.id or header.link"
            ))
        })?;
        let kind = format.to_ascii_lowercase();
        let mut media = serde_json::Map::new();
        for k in ["id", "link", "filename"] {
            if let Some(v) = h[k].as_str().filter(|s| !s.trim().is_empty()) {
                media.insert(k.into(), json!(v));
            }
        }
        if !media.contains_key("id") && !media.contains_key("link") {
            return Err(Refusal::Parameters(format!(
                "the template's header is {format}: give header.id or header.link"
            )));
        }
        if let Some(link) = media.get("link").and_then(Value::as_str)
            && !link.starts_with("https://")
        {
            return Err(Refusal::Parameters(
                "header.link must be an https:// URL".into(),
            ));
        }
        out.push(json!({"type": "header", "parameters": [{"type": kind, kind.clone(): media}]}));
        rendered.push(format!("[{kind}]"));
    } else if !p.header.is_empty() {
        let text = header
            .and_then(|h| h["text"].as_str())
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                Refusal::Parameters(
                    "the template's header has a placeholder: give header.text".into(),
                )
            })?;
        let mut param = json!({"type": "text", "text": text});
        if named {
            param["parameter_name"] = json!(p.header[0]);
        }
        out.push(json!({"type": "header", "parameters": [param]}));
    } else if header.is_some() {
        return Err(Refusal::Parameters(
            "extra header: the template's header takes no parameter".into(),
        ));
    }
    for c in components(t) {
        match kind(&c).as_str() {
            "HEADER" if p.header_media.is_none() => {
                let text = c["text"].as_str().unwrap_or_default();
                let values: BTreeMap<String, String> = p
                    .header
                    .first()
                    .zip(header.and_then(|h| h["text"].as_str()))
                    .map(|(k, v)| (k.clone(), v.to_owned()))
                    .into_iter()
                    .collect();
                let t = substitute(text, &values);
                if !t.trim().is_empty() {
                    rendered.push(t);
                }
            }
            "BODY" => rendered.push(substitute(c["text"].as_str().unwrap_or_default(), &values)),
            "FOOTER" => {
                if let Some(f) = c["text"].as_str().filter(|s| !s.trim().is_empty()) {
                    rendered.push(f.to_owned());
                }
            }
            _ => {}
        }
    }
    if !p.body.is_empty() {
        let params: Vec<Value> = p
            .body
            .iter()
            .map(|k| {
                let mut v = json!({"type": "text", "text": values[k]});
                if named {
                    v["parameter_name"] = json!(k);
                }
                v
            })
            .collect();
        out.push(json!({"type": "body", "parameters": params}));
    }
    // Buttons: every URL button with a placeholder needs its text; quick replies may carry a
    // payload.
    let given_buttons = req.buttons.clone().unwrap_or_default();
    let buttons = components(t)
        .into_iter()
        .find(|c| kind(c) == "BUTTONS")
        .and_then(|c| c["buttons"].as_array().cloned())
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    for b in &given_buttons {
        let index = b["index"]
            .as_u64()
            .or_else(|| b["index"].as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| Refusal::Parameters("each button needs its index".into()))?
            as usize;
        if !seen.insert(index) {
            return Err(Refusal::Parameters(format!(
                "button {index} is given twice"
            )));
        }
        let Some(def) = buttons.get(index) else {
            return Err(Refusal::Parameters(format!(
                "extra button {index}: the template has {} buttons",
                buttons.len()
            )));
        };
        let kind = def["type"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let param = match kind.as_str() {
            "URL" if p.url_buttons.contains(&index) => {
                let text = b["text"]
                    .as_str()
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| {
                        Refusal::Parameters(format!("button {index} (URL) needs its text"))
                    })?;
                json!({"type": "button", "sub_type": "url", "index": index.to_string(), "parameters": [{"type": "text", "text": text}]})
            }
            "QUICK_REPLY" => {
                let payload = b["payload"]
                    .as_str()
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| {
                        Refusal::Parameters(format!(
                            "button {index} (quick reply) needs its payload"
                        ))
                    })?;
                json!({"type": "button", "sub_type": "quick_reply", "index": index.to_string(), "parameters": [{"type": "payload", "payload": payload}]})
            }
            other => {
                return Err(Refusal::Parameters(format!(
                    "extra button {index}: a {other} button takes no parameter"
                )));
            }
        };
        out.push(param);
    }
    if let Some(missing) = p.url_buttons.iter().find(|i| !seen.contains(i)) {
        return Err(Refusal::Parameters(format!(
            "missing button {missing}: its URL has a placeholder (give buttons[].text)"
        )));
    }
    let mut payload = json!({"name": t.name, "language": {"code": t.language}});
    if !out.is_empty() {
        payload["components"] = json!(out);
    }
    Ok(Prepared {
        payload,
        rendered: rendered.join("\n\n"),
        category: t.category.to_ascii_uppercase(),
    })
}

/// A template send to one conversation, checked against the catalog and the contact.
pub struct TemplateSend<'a> {
    pub db: &'a sea_orm::DatabaseConnection,
    pub store: &'a crate::store::batch::Store,
    pub graph: &'a Graph,
    pub token: &'a str,
    pub phone_number_id: &'a str,
    /// The number's WhatsApp Business Account (whose catalog the template is looked up in).
    pub waba_id: Option<&'a str>,
    pub workspace_id: i64,
    pub conversation_id: i64,
    pub contact_id: i64,
    pub contact: &'a crate::ingest::event::ContactKey,
    pub request: &'a TemplateRequest,
    pub key: &'a str,
    /// `agent_type` of the outbound row: `operator`, `leads` or the agent's name.
    pub sender: &'a str,
    pub author: crate::ingest::event::Author,
    pub correlation_id: &'a str,
}

/// Why a template send ended without an outcome from the Graph API.
#[derive(Debug)]
pub enum NotSent {
    Refused(Refusal),
    /// The catalog or the contact could not be read.
    Store(String),
    /// The contact has no address a template can go to.
    NoAddress,
}

/// Checks and sends a template once per key through the outbox. A 131050 from the Graph API
/// (the person stopped marketing messages) marks the contact opted out.
pub async fn send(s: TemplateSend<'_>) -> Result<super::outbox::Outcome, NotSent> {
    use super::outbox::{self, Outcome, Outgoing};
    let refuse = |r: Refusal| {
        metrics::counter!(crate::metrics::TEMPLATES_SENT, "outcome" => r.reason()).increment(1);
        tracing::info!(correlation_id = %s.correlation_id, template = %s.request.name, reason = r.reason(), "template send refused before it left");
        NotSent::Refused(r)
    };
    let template = match s.waba_id {
        Some(waba) => store::find(
            s.db,
            s.workspace_id,
            waba,
            &s.request.name,
            &s.request.language,
        )
        .await
        .map_err(|e| NotSent::Store(e.to_string()))?,
        None => None,
    };
    let opted_out = crate::store::contacts::opted_out(s.db, s.contact_id)
        .await
        .map_err(|e| NotSent::Store(e.to_string()))?;
    let prepared = prepare(template.as_ref(), s.request, opted_out).map_err(refuse)?;
    let to = outbox::recipient(s.contact).ok_or(NotSent::NoAddress)?;
    let outcome = outbox::send_once(Outgoing {
        db: s.db,
        store: s.store,
        graph: s.graph,
        token: s.token,
        phone_number_id: s.phone_number_id,
        workspace_id: s.workspace_id,
        conversation_id: s.conversation_id,
        contact_id: s.contact_id,
        contact: s.contact,
        to: &to,
        key: s.key,
        body: &prepared.rendered,
        template: Some(&prepared.payload),
        media: None,
        answers: None,
        sender: s.sender,
        author: s.author,
        correlation_id: s.correlation_id,
        prompt_tokens: 0,
        completion_tokens: 0,
        finish_reason: None,
    })
    .await;
    if let Outcome::Failed { code, .. } = &outcome
        && code == "131050"
        && let Err(e) =
            crate::store::contacts::mark_opted_out(s.db, s.contact_id, chrono::Utc::now()).await
    {
        tracing::error!(error = %e, contact_id = s.contact_id, "cannot mark the contact opted out after 131050");
    }
    // Meta says the template is paused (132015) or disabled (132016): the catalog learns it
    // now, so the next send is refused before it leaves (the webhook may come later).
    if let (Outcome::Failed { code, message }, Some(t)) = (&outcome, &template) {
        let status = match code.as_str() {
            "132015" => Some("PAUSED"),
            "132016" => Some("DISABLED"),
            _ => None,
        };
        if let Some(status) = status
            && let Err(e) = store::set_status(s.db, t.id, status, message).await
        {
            tracing::error!(error = %e, template = %t.name, "cannot record the template's status");
        }
    }
    metrics::counter!(crate::metrics::TEMPLATES_SENT, "outcome" => outcome.label()).increment(1);
    Ok(outcome)
}

/// What one catalog sync did.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub struct Synced {
    /// WhatsApp Business Accounts read.
    pub accounts: usize,
    pub templates: usize,
    /// Pages read from the Graph API.
    pub pages: usize,
    /// Templates the catalog had that the Graph API no longer lists (now `DELETED`).
    pub gone: usize,
    /// WABAs that could not be read, with why.
    pub errors: Vec<String>,
}

/// The WABAs to sync: (workspace, waba id, token) once each, from the accounts that have both.
pub fn wabas(
    directory: &crate::store::accounts::Directory,
    token: impl Fn(&str) -> Option<String>,
    workspace: Option<i64>,
) -> Vec<(i64, String, String)> {
    let mut out: Vec<(i64, String, String)> = Vec::new();
    for a in directory.all() {
        let (Some(waba), Some(token)) = (a.waba_id.clone(), token(&a.phone_number_id)) else {
            continue;
        };
        if workspace.is_some_and(|w| w != a.workspace_id) {
            continue;
        }
        if !out
            .iter()
            .any(|(w, id, _)| *w == a.workspace_id && *id == waba)
        {
            out.push((a.workspace_id, waba, token));
        }
    }
    out
}

/// Reads every page of each WABA's catalog and stores it.
pub async fn sync(
    db: &sea_orm::DatabaseConnection,
    graph: &Graph,
    wabas: &[(i64, String, String)],
) -> Synced {
    let mut s = Synced::default();
    for (ws, waba, token) in wabas {
        match graph.list_templates(waba, token).await {
            Ok((list, pages)) => {
                s.accounts += 1;
                s.pages += pages;
                s.templates += list.len();
                match store::replace_catalog(db, *ws, waba, &list).await {
                    Ok(gone) => s.gone += gone,
                    Err(e) => s.errors.push(format!("WABA {waba}: cannot store: {e}")),
                }
            }
            Err(SendError { code, message, .. }) => {
                s.errors.push(format!("WABA {waba}: {code}: {message}"));
            }
        }
    }
    metrics::counter!(crate::metrics::TEMPLATE_SYNCS, "outcome" => if s.errors.is_empty() { "ok" } else { "error" }).increment(1);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(format: &str, components: Value) -> Template {
        Template {
            id: 1,
            workspace_id: 1,
            waba_id: "W".into(),
            template_id: None,
            name: "t".into(),
            language: "en_US".into(),
            category: "MARKETING".into(),
            status: "APPROVED".into(),
            quality: None,
            parameter_format: format.into(),
            components: components.to_string(),
            reason: None,
            synced_at: None,
            updated_at: chrono::Utc::now(),
        }
    }

    fn req(parameters: Value) -> TemplateRequest {
        TemplateRequest {
            name: "t".into(),
            language: "en_US".into(),
            parameters: Some(serde_json::from_value(parameters).unwrap()),
            header: None,
            buttons: None,
        }
    }

    #[test]
    fn positional_parameters_render_and_count() {
        let t = template(
            "POSITIONAL",
            json!([{"type": "BODY", "text": "Hi {{1}}, your order {{2}} is ready."}, {"type": "FOOTER", "text": "Shop"}]),
        );
        assert_eq!(placeholders(&t).body, vec!["1", "2"]);
        let p = prepare(Some(&t), &req(json!(["Ana", "42"])), false).unwrap();
        assert_eq!(p.rendered, "Hi Ana, your order 42 is ready.\n\nShop");
        assert_eq!(p.payload["components"][0]["parameters"][1]["text"], "42");
        let e = prepare(Some(&t), &req(json!(["Ana"])), false).unwrap_err();
        assert!(e.message().contains("missing {{2}}"), "{}", e.message());
        let e = prepare(Some(&t), &req(json!(["a", "b", "c"])), false).unwrap_err();
        assert!(e.message().contains("extra {{3}}"), "{}", e.message());
    }

    #[test]
    fn named_parameters_name_the_missing_and_the_extra() {
        let t = template(
            "NAMED",
            json!([{"type": "BODY", "text": "Hi {{first_name}}"}]),
        );
        let e = prepare(Some(&t), &req(json!({"name": "x"})), false).unwrap_err();
        assert_eq!(e.reason(), "template_parameters");
        assert!(e.message().contains("missing first_name") && e.message().contains("extra name"));
        let p = prepare(Some(&t), &req(json!({"first_name": "Jo"})), false).unwrap();
        assert_eq!(
            p.payload["components"][0]["parameters"][0]["parameter_name"],
            "first_name"
        );
    }

    #[test]
    fn status_and_opt_out_refuse_first() {
        let mut t = template("POSITIONAL", json!([{"type": "BODY", "text": "Hi"}]));
        assert_eq!(
            prepare(Some(&t), &req(json!([])), true).unwrap_err(),
            Refusal::OptedOut
        );
        t.category = "UTILITY".into();
        assert!(prepare(Some(&t), &req(json!([])), true).is_ok());
        t.status = "PAUSED".into();
        assert_eq!(
            prepare(Some(&t), &req(json!([])), false).unwrap_err(),
            Refusal::NotApproved("PAUSED".into())
        );
        assert_eq!(
            prepare(None, &req(json!([])), false).unwrap_err(),
            Refusal::NotFound
        );
    }

    #[test]
    fn media_headers_and_url_buttons_are_required() {
        let t = template(
            "POSITIONAL",
            json!([{"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "New in"},
                   {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Stop"}, {"type": "URL", "text": "Shop", "url": "https://x.test/{{1}}"}]}]),
        );
        let p = placeholders(&t);
        assert_eq!(p.header_media.as_deref(), Some("IMAGE"));
        assert_eq!(p.url_buttons, vec![1]);
        let mut r = req(json!([]));
        assert!(prepare(Some(&t), &r, false).is_err());
        r.header = Some(json!({"id": "media-1"}));
        let e = prepare(Some(&t), &r, false).unwrap_err();
        assert!(e.message().contains("missing button 1"), "{}", e.message());
        r.buttons = Some(vec![json!({"index": 1, "text": "spring"})]);
        let ok = prepare(Some(&t), &r, false).unwrap();
        assert_eq!(
            ok.payload["components"][0]["parameters"][0]["image"]["id"],
            "media-1"
        );
        assert_eq!(ok.payload["components"][1]["sub_type"], "url");
    }
}
