//! What the intake reads of a body before its signature is checked: only the ids that pick the
//! secret. It builds no document: containers of an unexpected shape are skipped unread
//! (`IgnoredAny`), ids are borrowed from the bytes where they need no unescaping, and nothing
//! else is kept. A routing id of the wrong type, or a routing key given twice, is refused here:
//! those are the bodies two readers could read two ways.

use std::{borrow::Cow, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

/// How a body reads at the edge.
#[derive(Debug, PartialEq, Eq)]
pub enum Routing {
    /// JSON, naming these ids (each list sorted and distinct; all may be empty for a JSON
    /// body of an unexpected shape, which processing reports).
    Json(Ids),
    /// JSON whose routing ids cannot be read one way only (a number where an id goes, a key
    /// given twice): refused before anything else is done with it.
    Refused(String),
    /// Not JSON at all.
    NotJson(String),
}

/// The ids a body names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ids {
    /// `phone_number_id`s (Meta's `metadata`, Kapso's top level, `conversation` and `data[]`).
    pub phone_number_ids: Vec<String>,
    /// Meta's `entry[].id`: the WhatsApp Business Account.
    pub waba_ids: Vec<String>,
    /// Kapso's `project_id` (project webhooks).
    pub project_id: Option<String>,
    /// Kapso's `type` (batches carry it) or `event`; Meta's `changes[].field`s (distinct, in
    /// order, joined by `,`).
    pub event_type: Option<String>,
}

/// The routing ids of a Meta body.
pub fn meta(body: &[u8]) -> Routing {
    scan::<MetaEnvelope>(body, |env, ids| {
        let mut fields: Vec<String> = Vec::new();
        for entry in env.entry.0 {
            ids.waba_ids.extend(entry.id.map(Id::into_string));
            for change in entry.changes.0 {
                if let Some(f) = change.field.0.filter(|f| !f.is_empty() && f.len() <= 64)
                    && !fields.iter().any(|x| *x == *f)
                    && fields.len() < 4
                {
                    fields.push(f.into_owned());
                }
                let pnid = change
                    .value
                    .0
                    .and_then(|v| v.metadata.0)
                    .and_then(|m| m.phone_number_id);
                ids.phone_number_ids.extend(pnid.map(Id::into_string));
            }
        }
        ids.event_type = (!fields.is_empty()).then(|| fields.join(","));
    })
}

/// The routing ids of a Kapso body (single, or `{"batch":true,"data":[…]}`).
pub fn kapso(body: &[u8]) -> Routing {
    scan::<KapsoEnvelope>(body, |env, ids| {
        ids.phone_number_ids
            .extend(env.phone_number_id.map(Id::into_string));
        ids.phone_number_ids.extend(
            env.conversation
                .0
                .and_then(|c| c.phone_number_id)
                .map(Id::into_string),
        );
        for item in env.data.0 {
            ids.phone_number_ids
                .extend(item.phone_number_id.map(Id::into_string));
            ids.phone_number_ids.extend(
                item.conversation
                    .0
                    .and_then(|c| c.phone_number_id)
                    .map(Id::into_string),
            );
        }
        ids.project_id = env
            .project_id
            .map(Id::into_string)
            .filter(|p| !p.is_empty());
        ids.event_type = env
            .event_type
            .0
            .or(env.event.0)
            .map(Cow::into_owned)
            .filter(|t| !t.is_empty());
    })
}

fn scan<'a, T: Deserialize<'a>>(body: &'a [u8], read: impl FnOnce(T, &mut Ids)) -> Routing {
    // A webhook is a JSON object. Anything else names no account; it is kept (if signed) as
    // not processable, with the reason (serde's derived structs would read an array's
    // elements as their fields, so it must not reach a reader).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Routing::NotJson(match strict(body) {
            Strict::Unreadable(e) => e,
            _ => "the body is not a JSON object".into(),
        });
    }
    match serde_json::from_slice::<T>(body) {
        Ok(env) => {
            let mut ids = Ids::default();
            read(env, &mut ids);
            distinct(&mut ids.phone_number_ids);
            distinct(&mut ids.waba_ids);
            Routing::Json(ids)
        }
        Err(e) if e.is_data() => Routing::Refused(e.to_string()),
        Err(e) => Routing::NotJson(e.to_string()),
    }
}

fn distinct(ids: &mut Vec<String>) {
    ids.retain(|s| !s.is_empty());
    ids.sort_unstable();
    ids.dedup();
}

/// An id: a JSON string (or null); anything else is refused with a message naming the type.
struct Id<'a>(Cow<'a, str>);

impl Id<'_> {
    fn into_string(self) -> String {
        self.0.into_owned()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Id<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Id<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an id as a JSON string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Id(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Id(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A text where one is expected, `None` for any other value (skipped unread).
#[derive(Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// An array of `T` where one is expected; any other value is skipped unread (empty).
struct List<T>(Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Obj<T>>()? {
                    items.extend(item.0);
                }
                Ok(List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(List(Vec::new()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(List(Vec::new()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(List(Vec::new()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(List(Vec::new()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(List(Vec::new()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(List(Vec::new()))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(List(Vec::new()))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// An object read as `T` where one is expected; any other value is skipped unread (`None`).
struct Obj<T>(Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Obj(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|t| Obj(Some(t)))
            }
            // serde's derived structs read an array as their fields in order, so a processor
            // would read `"metadata": ["123"]` as phone number 123: refused, not skipped.
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
                Err(de::Error::custom(
                    "a routing object is given as an array (readers differ on what it names)",
                ))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Obj(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Obj(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Obj(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Obj(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Obj(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Obj(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

// The envelopes: derived structs refuse a routing key given twice ("duplicate field") and an
// id of the wrong type; every other key is skipped unread.

#[derive(Deserialize)]
struct MetaEnvelope<'a> {
    #[serde(default, borrow)]
    entry: List<MetaEntry<'a>>,
}

#[derive(Deserialize)]
struct MetaEntry<'a> {
    #[serde(default, borrow)]
    id: Option<Id<'a>>,
    #[serde(default, borrow)]
    changes: List<MetaChange<'a>>,
}

#[derive(Deserialize)]
struct MetaChange<'a> {
    #[serde(default, borrow)]
    value: Obj<MetaValue<'a>>,
    #[serde(default, borrow)]
    field: Text<'a>,
}

#[derive(Deserialize)]
struct MetaValue<'a> {
    #[serde(default, borrow)]
    metadata: Obj<MetaMetadata<'a>>,
}

#[derive(Deserialize)]
struct MetaMetadata<'a> {
    #[serde(default, borrow)]
    phone_number_id: Option<Id<'a>>,
}

#[derive(Deserialize)]
struct KapsoEnvelope<'a> {
    #[serde(default, borrow)]
    phone_number_id: Option<Id<'a>>,
    #[serde(default, borrow)]
    conversation: Obj<KapsoConversation<'a>>,
    #[serde(default, borrow)]
    project_id: Option<Id<'a>>,
    #[serde(default, borrow, rename = "type")]
    event_type: Text<'a>,
    #[serde(default, borrow)]
    event: Text<'a>,
    #[serde(default, borrow)]
    data: List<KapsoItem<'a>>,
}

#[derive(Deserialize)]
struct KapsoItem<'a> {
    #[serde(default, borrow)]
    phone_number_id: Option<Id<'a>>,
    #[serde(default, borrow)]
    conversation: Obj<KapsoConversation<'a>>,
}

#[derive(Deserialize)]
struct KapsoConversation<'a> {
    #[serde(default, borrow)]
    phone_number_id: Option<Id<'a>>,
}

/// What the strict reading of a signed body finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Strict {
    Fine,
    /// A key given twice in one object: readers differ on which one counts.
    Duplicate(String),
    /// Not readable as JSON at all (nested past the parser's depth limit, say).
    Unreadable(String),
}

/// Reads a whole JSON body once for keys given twice in any object. One pass over the bytes,
/// no document built, keys borrowed where they need no unescaping; serde_json's depth limit
/// (128) applies, so what nothing downstream could read is found here.
pub fn strict(body: &[u8]) -> Strict {
    match serde_json::from_slice::<Found>(body) {
        Ok(Found(None)) => Strict::Fine,
        Ok(Found(Some(key))) => Strict::Duplicate(key),
        Err(e) => Strict::Unreadable(e.to_string()),
    }
}

struct Walk;
struct Found(Option<String>);
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Found {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Walk)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = Found;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        // Few keys: a list; many: a set (an object of 100,000 keys stays linear).
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        let mut set: Option<std::collections::HashSet<Cow<'de, str>>> = None;
        let mut found = None;
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let seen = match &mut set {
                Some(set) => !set.insert(key.clone()),
                None => {
                    let seen = keys.contains(&key);
                    keys.push(key.clone());
                    if keys.len() > 32 {
                        set = Some(keys.drain(..).collect());
                    }
                    seen
                }
            };
            if seen && found.is_none() {
                found = Some(key.into_owned());
            }
            let inner = map.next_value::<Found>()?;
            found = found.or(inner.0);
        }
        Ok(Found(found))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
        let mut found = None;
        while let Some(inner) = seq.next_element::<Found>()? {
            found = found.or(inner.0);
        }
        Ok(Found(found))
    }
    fn visit_str<E>(self, _: &str) -> Result<Found, E> {
        Ok(Found(None))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Found, E> {
        Ok(Found(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Found, E> {
        Ok(Found(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Found, E> {
        Ok(Found(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Found, E> {
        Ok(Found(None))
    }
    fn visit_unit<E>(self) -> Result<Found, E> {
        Ok(Found(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(r: Routing) -> Ids {
        match r {
            Routing::Json(ids) => ids,
            other => panic!("not routable: {other:?}"),
        }
    }

    #[test]
    fn meta_routing_reads_every_entry_and_change() {
        let body = br#"{"object":"whatsapp_business_account","entry":[
            {"id":"W1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"B"}}},
                                 {"value":{"metadata":{"phone_number_id":"A"}},"field":"messages"}]},
            {"id":"W2","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"B"}}}]}]}"#;
        let r = ids(meta(body));
        assert_eq!(r.phone_number_ids, vec!["A", "B"]);
        assert_eq!(r.waba_ids, vec!["W1", "W2"]);
        assert_eq!(r.event_type.as_deref(), Some("messages"));
        let echo = ids(meta(
            br#"{"entry":[{"changes":[{"field":"smb_message_echoes"},{"field":"messages"},{"field":7}]}]}"#,
        ));
        assert_eq!(
            echo.event_type.as_deref(),
            Some("smb_message_echoes,messages")
        );
        // Odd shapes are skipped, not refused: processing reports them.
        assert_eq!(ids(meta(br#"{"entry":"odd"}"#)), Ids::default());
        assert_eq!(
            ids(meta(
                br#"{"entry":[1,{"changes":{"x":1}},{"changes":[{"value":"x"}]}]}"#
            )),
            Ids::default()
        );
        assert!(matches!(meta(b"not json"), Routing::NotJson(_)));
        assert!(
            matches!(meta(br#"[{"entry":[]}]"#), Routing::NotJson(e) if e.contains("not a JSON object"))
        );
        assert!(matches!(kapso(b"  \"text\""), Routing::NotJson(_)));
        // Escaped ids are read as their text.
        let r = ids(meta(
            br#"{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"1\u0032"}}}]}]}"#,
        ));
        assert_eq!(r.phone_number_ids, vec!["12"]);
    }

    #[test]
    fn routing_ids_that_could_be_read_two_ways_are_refused() {
        for body in [
            &br#"{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":123}}}]}]}"#[..],
            br#"{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"A"},"metadata":{"phone_number_id":"B"}}}]}]}"#,
            br#"{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"A","phone_number_id":"B"}}}]}]}"#,
            br#"{"entry":[],"entry":[]}"#,
            br#"{"entry":[{"id":4000}]}"#,
            br#"{"entry":[{"changes":[{"value":{"metadata":["123"]}}]}]}"#,
            br#"{"entry":[["W",[{"value":{}}]]]}"#,
        ] {
            assert!(
                matches!(meta(body), Routing::Refused(_)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for body in [
            &br#"{"phone_number_id":0,"conversation":{"phone_number_id":"P"}}"#[..],
            br#"{"conversation":{"phone_number_id":"P"},"conversation":{"phone_number_id":"Q"}}"#,
            br#"{"project_id":7}"#,
            br#"{"batch":true,"data":[{"phone_number_id":["P"]}]}"#,
            br#"{"conversation":["P"]}"#,
        ] {
            assert!(
                matches!(kapso(body), Routing::Refused(_)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn kapso_routing_reads_single_batch_and_project() {
        let r = ids(kapso(
            br#"{"message":{},"conversation":{"phone_number_id":"P"},"phone_number_id":"P"}"#,
        ));
        assert_eq!(r.phone_number_ids, vec!["P"]);
        assert_eq!(r.event_type, None);
        let r = ids(kapso(
            br#"{"type":"whatsapp.message.received","batch":true,"data":[{"phone_number_id":"P"},{"conversation":{"phone_number_id":"Q"}}]}"#,
        ));
        assert_eq!(r.phone_number_ids, vec!["P", "Q"]);
        assert_eq!(r.event_type.as_deref(), Some("whatsapp.message.received"));
        let r = ids(kapso(
            br#"{"event":"workflow.execution.handoff","project_id":"proj-1"}"#,
        ));
        assert_eq!(r.project_id.as_deref(), Some("proj-1"));
        assert_eq!(r.event_type.as_deref(), Some("workflow.execution.handoff"));
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        let dup = |k: &str| Strict::Duplicate(k.into());
        assert_eq!(strict(br#"{"a":1,"b":{"c":[{"d":1}]}}"#), Strict::Fine);
        assert_eq!(strict(br#"{"a":1,"b":{"c":[{"d":1,"d":2}]}}"#), dup("d"));
        assert_eq!(strict(br#"{"a":1,"\u0061":2}"#), dup("a"));
        let many: String = (0..100).map(|i| format!("\"k{i}\":{i},")).collect();
        assert_eq!(strict(format!("{{{many}\"k7\":0}}").as_bytes()), dup("k7"));
        assert!(matches!(strict(b"not json"), Strict::Unreadable(_)));
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert!(
            matches!(strict(deep.as_bytes()), Strict::Unreadable(e) if e.starts_with("recursion limit"))
        );
    }
}
