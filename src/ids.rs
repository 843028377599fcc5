//! Ids as clients and tokens send them: a JSON integer or a numeric string ("42", " 42 "),
//! read the same way wherever one arrives (RoomChannel identifiers, connection-token claims,
//! the `typing` action's `conversation_id`).

use serde_json::Value;

/// Why a value is not an id (the reason label it is counted or logged under).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
pub enum IdError {
    #[strum(serialize = "id_not_an_integer")]
    NotAnInteger,
    #[strum(serialize = "id_not_numeric")]
    NotNumeric,
    #[strum(serialize = "id_of_wrong_type")]
    WrongType,
}

impl IdError {
    pub fn label(self) -> &'static str {
        self.into()
    }
}

/// The id `value` holds; `Ok(None)` when it is absent, null or a blank string.
pub fn numeric_id(value: Option<&Value>) -> Result<Option<i64>, IdError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(IdError::NotAnInteger),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| IdError::NotNumeric),
        Some(_) => Err(IdError::WrongType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_and_numeric_strings_are_ids_and_the_rest_is_named() {
        for (value, id) in [(json!(42), 42), (json!("42"), 42), (json!(" 7 "), 7)] {
            assert_eq!(numeric_id(Some(&value)), Ok(Some(id)), "{value}");
        }
        for value in [json!(null), json!(""), json!("  ")] {
            assert_eq!(numeric_id(Some(&value)), Ok(None), "{value}");
        }
        assert_eq!(numeric_id(None), Ok(None));
        assert_eq!(numeric_id(Some(&json!(1.5))), Err(IdError::NotAnInteger));
        assert_eq!(numeric_id(Some(&json!("4x"))), Err(IdError::NotNumeric));
        assert_eq!(numeric_id(Some(&json!([1]))), Err(IdError::WrongType));
        assert_eq!(IdError::NotNumeric.label(), "id_not_numeric");
    }
}
