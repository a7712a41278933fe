//! Bridge protocol.
