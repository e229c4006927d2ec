//! The write rules of the contract, checked as properties over generated bodies and ids rather
//! than a handful of examples: the edges are where scalar values, bytes and UTF-16 units differ,
//! where whitespace and control characters overlap (U+0085), and at 5000 and 5001 scalar values.

// A test's unwrap is one of its assertions: its failure is the test's failure.
#![allow(clippy::unwrap_used)]

use parley_domain::validation::{MAX_BODY_CHARS, validate_body, validate_client_msg_id};
use proptest::prelude::*;

/// Characters from every class the rule distinguishes: plain, multi-byte and astral text,
/// combining marks, ASCII and Unicode whitespace, the three allowed control characters, other
/// control characters (one of them also whitespace), and a format character that is neither.
fn body_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => Just('é'),
        1 => Just('😀'),
        1 => Just('\u{301}'),
        1 => prop::sample::select(vec![' ', '\u{a0}', '\u{3000}', '\u{2028}']),
        1 => prop::sample::select(vec!['\t', '\n', '\r']),
        1 => prop::sample::select(vec!['\u{0}', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}']),
        1 => Just('\u{200b}'),
    ]
}

/// Bodies of every length from empty to past the limit, mostly near the ends.
fn body() -> impl Strategy<Value = Vec<char>> {
    prop_oneof![
        prop::collection::vec(body_char(), 0..40),
        prop::collection::vec(body_char(), MAX_BODY_CHARS - 3..MAX_BODY_CHARS + 3),
    ]
}

/// The contract's rule, stated directly on the scalar values.
fn allowed(chars: &[char]) -> bool {
    (1..=MAX_BODY_CHARS).contains(&chars.len())
        && !chars.iter().all(|c| c.is_whitespace())
        && chars.iter().all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
}

proptest! {
    #[test]
    fn a_body_is_accepted_exactly_when_the_contract_allows_it(chars in body()) {
        let body: String = chars.iter().collect();
        prop_assert_eq!(validate_body(&body).is_ok(), allowed(&chars), "{} scalar values", chars.len());
    }

    #[test]
    fn the_limit_counts_scalar_values_not_bytes_or_utf16_units(n in 1..=MAX_BODY_CHARS, astral in any::<bool>()) {
        let unit = if astral { "😀" } else { "é" };
        prop_assert!(validate_body(&unit.repeat(n)).is_ok());
        prop_assert!(validate_body(&unit.repeat(MAX_BODY_CHARS + 1)).is_err());
    }

    #[test]
    fn a_client_msg_id_is_one_to_64_of_the_safe_alphabet(id in "[A-Za-z0-9_-]{0,70}|.{0,10}") {
        let safe = id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        prop_assert_eq!(validate_client_msg_id(&id).is_ok(), safe && (1..=64).contains(&id.len()));
    }
}
