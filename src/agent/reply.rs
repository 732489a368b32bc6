//! What the model says, made safe to record and send: no NUL or other control character
//! (newline and tab stay), no Unicode noncharacter, no reasoning (`<think>…</think>`), and a
//! reply the server cut at its token limit (`finish_reason: "length"`) ends at its last
//! complete sentence instead of mid-word.

/// The reply without reasoning blocks and unsafe characters, trimmed.
pub fn clean(text: &str) -> String {
    let without = drop_reasoning(text);
    let mut out = String::with_capacity(without.len());
    for c in without.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => {}
            c if c.is_control() || is_noncharacter(c) => {}
            c => out.push(c),
        }
    }
    out.trim().to_owned()
}

/// U+FDD0–U+FDEF and the last two code points of every plane.
fn is_noncharacter(c: char) -> bool {
    let n = c as u32;
    (0xFDD0..=0xFDEF).contains(&n) || n & 0xFFFE == 0xFFFE
}

/// Removes `<think>…</think>` (and `<thinking>…</thinking>`) blocks; an unclosed one at the
/// start means the model never got past its reasoning: nothing is left.
fn drop_reasoning(text: &str) -> String {
    let mut rest = text;
    let mut out = String::new();
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some((start, open_len, close)) = ["<think>", "<thinking>"]
            .iter()
            .filter_map(|open| {
                lower
                    .find(open)
                    .map(|i| (i, open.len(), open.replace('<', "</")))
            })
            .min_by_key(|(i, ..)| *i)
        else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..start]);
        let after = start + open_len;
        match lower[after..].find(&close) {
            Some(end) => rest = &rest[after + end + close.len()..],
            None => return out,
        }
    }
}

/// A reply cut at the token limit, ended at its last complete sentence; `None` when no
/// sentence was complete (the caller asks again with a larger limit).
pub fn last_sentence(text: &str) -> Option<String> {
    let mut end = None;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (k, (i, c)) in chars.iter().enumerate() {
        let closes = matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？' | '\n');
        let next_is_break = chars.get(k + 1).is_none_or(|(_, n)| n.is_whitespace());
        if closes && next_is_break {
            end = Some(i + c.len_utf8());
        }
    }
    let cut = text[..end?].trim_end();
    (!cut.is_empty()).then(|| cut.to_owned())
}

/// A reply still cut after asking again: up to its last whole word, marked as cut.
pub fn last_word(text: &str) -> String {
    let cut = match text.rfind(char::is_whitespace) {
        Some(i) if i > 0 => &text[..i],
        _ => text,
    };
    format!("{}…", cut.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_noncharacters_never_leave() {
        assert_eq!(
            clean("a\u{0}b\u{1b}[31mc\u{85}d\r\n\te\u{fffe}\u{fdd0}f\u{10ffff}"),
            "ab[31mcd\n\tef"
        );
        assert_eq!(clean("  \u{0}\u{7} "), "");
    }

    #[test]
    fn reasoning_is_dropped() {
        assert_eq!(clean("<think>the user wants…</think>Hello!"), "Hello!");
        assert_eq!(
            clean("A <THINKING>x</THINKING>B <think>y</think> C"),
            "A B  C"
        );
        assert_eq!(clean("<think>still thinking when the limit came"), "");
    }

    #[test]
    fn a_cut_reply_ends_at_its_last_sentence() {
        assert_eq!(
            last_sentence("We ship to Spain. Delivery takes three da").as_deref(),
            Some("We ship to Spain.")
        );
        assert_eq!(last_sentence("v1.2 is out and then"), None);
        assert_eq!(last_sentence("no sentence ends here"), None);
        assert_eq!(last_word("no sentence ends he"), "no sentence ends…");
    }
}
