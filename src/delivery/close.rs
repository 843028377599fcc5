//! Why the server ends a connection, in the core's words; each wire protocol says it its own
//! way (ActionCable: a `disconnect` frame with `reason` and `reconnect`).

/// Why the server ends a connection (its `snake_case` name is ActionCable's `reason`, and
/// the label it is counted and logged under).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum DisconnectReason {
    /// Authentication failed for the connection as a whole.
    Unauthorized,
    /// The server is going away or a dependency is briefly unavailable; come back.
    ServerRestart,
    /// An operator or a revoked token ended it.
    Remote,
    /// The client did not read fast enough.
    TooSlow,
    /// Protocol abuse (oversized frames, floods).
    InvalidRequest,
    /// The connection's signed token expired: fetch a new one, then connect again.
    TokenExpired,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the client is told to come back.
    pub fn reconnect(self) -> bool {
        matches!(
            self,
            DisconnectReason::ServerRestart | DisconnectReason::TooSlow | DisconnectReason::Remote
        )
    }
}
