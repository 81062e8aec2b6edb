//! Redis answers as the store's results and errors.

use std::time::Duration;

use ::redis::{ErrorKind, RedisError, ServerErrorKind};
use bytes::Bytes;

use super::super::{Op as BatchOp, OpResult, StoreError};

/// One answer of the batch script: {1, value}, {2} (no value) or {0, error}.
pub(super) fn batch_result(op: &BatchOp, v: ::redis::Value) -> Result<OpResult, StoreError> {
    use ::redis::Value as V;
    let key = op.key();
    let bad = || StoreError::Rejected(format!("unexpected batch answer for {key:?}"));
    let V::Array(mut parts) = v else {
        return Err(bad());
    };
    let value = if parts.len() > 1 { parts.pop() } else { None };
    let status = match parts.first() {
        Some(V::Int(n)) => *n,
        _ => return Err(bad()),
    };
    match (status, value) {
        (0, e) => {
            let msg = match e {
                Some(V::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                Some(V::SimpleString(s)) => s,
                _ => String::new(),
            };
            Err(if msg.contains("not an integer") {
                StoreError::NotAnInteger(key.to_owned())
            } else if msg.contains("overflow") {
                StoreError::Overflow(key.to_owned())
            } else {
                StoreError::Rejected(msg)
            })
        }
        (2, _) => match op {
            BatchOp::Get(_) => Ok(OpResult::Value(None)),
            _ => Err(bad()),
        },
        (1, Some(v)) => match (op, v) {
            (BatchOp::Get(_), V::BulkString(b)) => Ok(OpResult::Value(Some(Bytes::from(b)))),
            (
                BatchOp::IncrWindow(..) | BatchOp::IncrBy(..) | BatchOp::MaxAdvance(..),
                V::Int(n),
            ) => Ok(OpResult::Count(n)),
            (BatchOp::HashGetAllUnprefixed(_), V::Array(flat)) => fields(flat).ok_or_else(bad),
            (BatchOp::SetEx(..), _) => Ok(OpResult::Done),
            (BatchOp::Del(_), V::Int(n)) => Ok(OpResult::Deleted(n > 0)),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// The flat `field, value, ...` answer of HGETALL as pairs; None when it is not one.
fn fields(flat: Vec<::redis::Value>) -> Option<OpResult> {
    use ::redis::Value as V;
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let Some(f) = it.next() {
        let (V::BulkString(f), Some(V::BulkString(v))) = (f, it.next()) else {
            return None;
        };
        out.push((String::from_utf8(f).ok()?, Bytes::from(v)));
    }
    Some(OpResult::Fields(out))
}

/// Milliseconds for Redis, at least 1 (0 would be an error) and at most ~100 years.
pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, 100 * 365 * 24 * 3600 * 1000)
}

/// Server errors are the command's fault, except those of a server that cannot serve now (a
/// cluster without a master for the slot, a demoted master, a server still loading); anything
/// else means Redis is unreachable.
pub(super) fn map_err(e: RedisError, key: &str) -> StoreError {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        ) => StoreError::Unavailable(e.to_string()),
        ErrorKind::Server(_) | ErrorKind::Extension => {
            let msg = e.to_string();
            if msg.contains("not an integer") {
                StoreError::NotAnInteger(key.to_owned())
            } else if msg.contains("overflow") {
                StoreError::Overflow(key.to_owned())
            } else {
                StoreError::Rejected(msg)
            }
        }
        ErrorKind::UnexpectedReturnType | ErrorKind::Parse => StoreError::Rejected(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}
