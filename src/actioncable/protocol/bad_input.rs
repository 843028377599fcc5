//! What each kind of bad input gets: one table, used by the session reader and repeated in
//! the README's abuse table (a test checks that the two agree).
//!
//! Bad input costs its sender at most its own connection: never a panic, never anything for
//! another client. What is ignored is counted in `cable_invalid_frames_total{reason}` under
//! [`BadInput::label`]; a rejected subscribe is counted in
//! `cable_commands_total{command="subscribe",result="rejected"}` and logged at debug.

use super::DisconnectReason;
use crate::connection::frame::WireFault;

/// A kind of bad input; its `reason` label is its name in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum BadInput {
    /// A text message that is not a JSON object.
    Malformed,
    /// `command` missing, not a string, or not subscribe/unsubscribe/message.
    UnknownCommand,
    /// `identifier` missing or not a string.
    MissingIdentifier,
    /// A `message` whose `data` is neither an object nor a string holding one.
    BadData,
    /// A subscribe whose identifier is not a JSON object.
    IdentifierNotObject,
    /// A `history` (alone or in a subscribe) that is not an object of `since` and stream
    /// positions, or names more than 16 streams.
    BadHistory,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// A binary message.
    Binary,
    /// A continuation frame with no message to continue.
    StrayContinuation,
    /// A subscribe whose identifier names no channel, an unknown channel, or bad parameters.
    BadIdentifier,
    /// A subscribe whose token is unknown, of another user or account, or not in the account.
    InvalidToken,
    /// A subscribe beyond `CABLE_MAX_SUBSCRIPTIONS`.
    TooManySubscriptions,
    /// A message (fragmented or not) over `CABLE_MAX_FRAME_SIZE`.
    TooLarge,
    /// Commands faster than `CABLE_MAX_COMMAND_RATE` (bursts of twice that are fine).
    RateLimited,
    /// More than `CABLE_MAX_REJECTS` rejected subscribes (token guessing).
    TooManyRejects,
    /// A frame that breaks RFC 6455 (unmasked, reserved bits, unknown opcode, a fragmented
    /// or oversized control frame).
    #[strum(serialize = "protocol_violation")]
    FrameViolation,
}

/// What the connection gets for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing is answered; the connection stays open.
    Ignore,
    /// `reject_subscription` for the identifier; the connection stays open.
    Reject,
    /// `disconnect` with this reason, then the close frame.
    Disconnect(DisconnectReason),
    /// The socket is closed at once: the peer does not speak WebSocket, so no frame is sent.
    Drop,
}

impl From<WireFault> for BadInput {
    fn from(fault: WireFault) -> BadInput {
        match fault {
            WireFault::Binary => BadInput::Binary,
            WireFault::StrayContinuation => BadInput::StrayContinuation,
            WireFault::TooLarge => BadInput::TooLarge,
            WireFault::FrameViolation => BadInput::FrameViolation,
        }
    }
}

impl BadInput {
    /// Every kind, in the order of the README's table.
    pub const ALL: [BadInput; 16] = [
        BadInput::Malformed,
        BadInput::UnknownCommand,
        BadInput::MissingIdentifier,
        BadInput::BadData,
        BadInput::IdentifierNotObject,
        BadInput::BadHistory,
        BadInput::InvalidUtf8,
        BadInput::Binary,
        BadInput::StrayContinuation,
        BadInput::BadIdentifier,
        BadInput::InvalidToken,
        BadInput::TooManySubscriptions,
        BadInput::TooLarge,
        BadInput::RateLimited,
        BadInput::TooManyRejects,
        BadInput::FrameViolation,
    ];

    /// The table.
    pub fn verdict(self) -> Verdict {
        use BadInput::*;
        match self {
            Malformed | UnknownCommand | MissingIdentifier | BadData | IdentifierNotObject
            | BadHistory | InvalidUtf8 | Binary | StrayContinuation => Verdict::Ignore,
            BadIdentifier | InvalidToken | TooManySubscriptions => Verdict::Reject,
            TooLarge | RateLimited => Verdict::Disconnect(DisconnectReason::InvalidRequest),
            TooManyRejects => Verdict::Disconnect(DisconnectReason::Unauthorized),
            FrameViolation => Verdict::Drop,
        }
    }

    /// The `reason` label it is counted under.
    pub fn label(self) -> &'static str {
        self.into()
    }
}

impl Verdict {
    /// How the README's abuse table words it.
    pub fn describe(self) -> String {
        match self {
            Verdict::Ignore => "ignored and counted".into(),
            Verdict::Reject => "`reject_subscription`".into(),
            Verdict::Disconnect(reason) => format!(
                "`disconnect` `{}`, `reconnect:{}`",
                reason.as_str(),
                reason.reconnect()
            ),
            Verdict::Drop => "socket closed, no frame".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's abuse table has a row per kind, with this table's verdict and label.
    #[test]
    fn the_readme_says_the_same() {
        let readme = include_str!("../../../README.md");
        for kind in BadInput::ALL {
            let label = format!("`{}`", kind.label());
            let row = readme
                .lines()
                .find(|line| line.starts_with('|') && line.contains(&label))
                .unwrap_or_else(|| panic!("README has no abuse-table row for {label}"));
            assert!(
                row.contains(&kind.verdict().describe()),
                "README row for {label} does not say {:?}: {row}",
                kind.verdict().describe()
            );
        }
    }

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<_> = BadInput::ALL.iter().map(|k| k.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), BadInput::ALL.len());
    }

    /// Metric labels and disconnect reasons are an interface: derived, they must still read
    /// as they always did.
    #[test]
    fn derived_words_are_the_documented_ones() {
        use crate::actioncable::protocol::DisconnectReason::*;
        assert_eq!(BadInput::InvalidUtf8.label(), "invalid_utf8");
        assert_eq!(BadInput::FrameViolation.label(), "protocol_violation");
        assert_eq!(
            BadInput::TooManySubscriptions.label(),
            "too_many_subscriptions"
        );
        let reasons = [
            Unauthorized,
            ServerRestart,
            Remote,
            TooSlow,
            InvalidRequest,
            TokenExpired,
        ];
        assert_eq!(
            reasons.map(|r| r.as_str()),
            [
                "unauthorized",
                "server_restart",
                "remote",
                "too_slow",
                "invalid_request",
                "token_expired"
            ]
        );
        use crate::ingress::streams::Skip;
        assert_eq!(
            [Skip::NotJson, Skip::TooLarge, Skip::AmbiguousChannel].map(Skip::label),
            ["not_json", "too_large", "ambiguous_channel"]
        );
        use crate::typing::Ignored;
        assert_eq!(
            [
                Ignored::BadParams,
                Ignored::NotVisible,
                Ignored::Unavailable
            ]
            .map(Ignored::label),
            ["bad_params", "not_visible", "unavailable"]
        );
    }
}
