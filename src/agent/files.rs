//! What the model sees and hears of a burst's files. With `vision`, an image (or sticker)
//! goes with its turn as an `image_url` part (a `data:` URL of the stored bytes, scaled down
//! when large). With `transcribe_model`, a voice note or audio goes to the provider's
//! `/audio/transcriptions` first; its transcript is kept on the file (`media.transcript`) and
//! is what the turn says. Kapso's own transcript is used when it came with the message.
//! Without either — or when the file could not be fetched in `media_wait_ms` — the turn keeps
//! the marker (`[image] caption`, `[audio]`).

use std::{collections::HashMap, time::Duration};

use super::{
    context::Turn,
    provider::TranscribeError,
    turn::{Inbound, TurnInput},
};
use crate::{
    metrics as m,
    store::media::{self as files, Media as File},
};

/// The burst's user turns, in order, with what the model may see and hear of their files.
pub async fn burst_turns(input: &TurnInput, burst: &[Inbound]) -> Vec<Turn> {
    let cfg = &input.answerer.provider.cfg;
    let wanted = |i: &Inbound| {
        i.message
            .media
            .as_ref()
            .is_some_and(|f| match f.kind.as_str() {
                "image" | "sticker" => cfg.vision,
                "audio" => cfg.transcribe_model.is_some() && f.transcript.is_none(),
                _ => false,
            })
    };
    let stored = if burst.iter().any(wanted) {
        wait_for_files(input, burst.iter().filter(|i| wanted(i))).await
    } else {
        HashMap::new()
    };
    let mut out = Vec::with_capacity(burst.len());
    for i in burst {
        let mut turn = Turn::of_message(&i.message);
        if let Some(f) = &i.message.media {
            let file = stored.get(&i.message.wamid);
            match f.kind.as_str() {
                "image" | "sticker" if cfg.vision => {
                    if let Some(url) = image_of(input, file).await {
                        turn.images.push(url);
                    }
                }
                "audio" => {
                    let transcript = match &f.transcript {
                        Some(t) => {
                            count("transcript", "kapso");
                            Some(t.clone())
                        }
                        None => match (&cfg.transcribe_model, file) {
                            (Some(model), Some(file)) => transcript_of(input, model, file).await,
                            _ => None,
                        },
                    };
                    if let Some(t) = transcript {
                        let what = if f.voice { "voice note" } else { "audio" };
                        turn.content = format!("[{what}] {t}");
                    }
                }
                _ => {}
            }
        }
        out.push(turn);
    }
    out
}

/// The files of these messages once none is `pending` any more, or what there is after
/// `media_wait_ms` (a file never holds a turn longer).
async fn wait_for_files<'a>(
    input: &TurnInput,
    wanted: impl Iterator<Item = &'a Inbound>,
) -> HashMap<String, File> {
    let wamids: Vec<&str> = wanted.map(|i| i.message.wamid.as_str()).collect();
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(input.answerer.provider.cfg.media_wait_ms);
    loop {
        let mut out = HashMap::new();
        for w in &wamids {
            if let Ok(Some(f)) = files::of_wamid(&input.db, input.workspace_id, w).await {
                out.insert((*w).to_owned(), f);
            }
        }
        let waiting = wamids.len() > out.len() || out.values().any(|f| f.status == files::PENDING);
        if !waiting || tokio::time::Instant::now() >= deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn image_of(input: &TurnInput, file: Option<&File>) -> Option<String> {
    let Some((file, key)) = file.and_then(|f| Some((f, f.storage_key.as_deref()?))) else {
        count("image", "not_stored");
        return None;
    };
    let media = &input.answerer.media;
    let bytes = match media.store.read(key).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(correlation_id = %input.correlation_id, media = file.id, error = %e, "the image cannot be read for the model");
            count("image", "failed");
            return None;
        }
    };
    let cfg = &input.answerer.provider.cfg;
    let (max_bytes, max_side) = (cfg.vision_max_bytes, cfg.vision_max_side);
    let mime = file.mime_type.clone().unwrap_or_default();
    let made = tokio::task::spawn_blocking(move || {
        crate::media::scale::data_url(&bytes, &mime, max_bytes, max_side)
    })
    .await;
    match made {
        Ok(Ok(url)) => {
            count("image", "sent");
            Some(url)
        }
        Ok(Err(e)) => {
            tracing::warn!(correlation_id = %input.correlation_id, media = file.id, error = %e, "the image is not sent to the model");
            count("image", "failed");
            None
        }
        Err(_) => None,
    }
}

async fn transcript_of(input: &TurnInput, model: &str, file: &File) -> Option<String> {
    if let Some(t) = &file.transcript {
        return Some(t.clone());
    }
    let Some(key) = file.storage_key.as_deref() else {
        count("transcript", "not_stored");
        return None;
    };
    let bytes = match input.answerer.media.store.read(key).await {
        Ok(b) => b.to_vec(),
        Err(e) => {
            tracing::warn!(correlation_id = %input.correlation_id, media = file.id, error = %e, "the audio cannot be read for transcription");
            count("transcript", "failed");
            return None;
        }
    };
    let mime = file.mime_type.as_deref().unwrap_or("audio/ogg");
    match input.answerer.provider.transcribe(model, bytes, mime).await {
        Ok(text) => {
            count("transcript", "made");
            if let Err(e) = files::set_transcript(&input.db, file.id, &text).await {
                tracing::warn!(media = file.id, error = %e, "the transcript cannot be kept");
            }
            Some(text)
        }
        Err(TranscribeError::Unsupported) => {
            count("transcript", "unsupported");
            None
        }
        Err(TranscribeError::Failed(e)) => {
            tracing::warn!(correlation_id = %input.correlation_id, media = file.id, error = %e, "the voice note was not transcribed; the context keeps its marker");
            count("transcript", "failed");
            None
        }
    }
}

fn count(kind: &'static str, outcome: &'static str) {
    metrics::counter!(m::AGENT_MEDIA, "kind" => kind, "outcome" => outcome).increment(1);
}
