//! The W3C `traceparent` header in a message's AMQP properties (`surge_protocol::trace`
//! has the format): read from a delivery, written on a publish.

use lapin::types::AMQPValue;
use lapin::BasicProperties;
use surge_protocol::{TraceParent, TraceParentError, TRACEPARENT_HEADER};

/// The `traceparent` a message carries: `None` without the header, an error when it is
/// malformed (or not a string), which a receiver ignores.
pub fn traceparent(props: &BasicProperties) -> Option<Result<TraceParent, TraceParentError>> {
    let value = props.headers().as_ref()?.inner().get(TRACEPARENT_HEADER)?;
    Some(match value {
        AMQPValue::LongString(s) => TraceParent::parse(s.as_bytes()),
        AMQPValue::ShortString(s) => TraceParent::parse(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => TraceParent::parse(b.as_slice()),
        _ => Err(TraceParentError::Shape),
    })
}

/// `props` with a `traceparent` header (a long string), beside its other headers.
pub fn with_traceparent(props: BasicProperties, tp: &TraceParent) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        TRACEPARENT_HEADER.into(),
        AMQPValue::LongString(tp.to_string().into()),
    );
    props.with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldTable, LongString, ShortString};

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with_header(v: AMQPValue) -> BasicProperties {
        let mut h = FieldTable::default();
        h.insert(TRACEPARENT_HEADER.into(), v);
        BasicProperties::default().with_headers(h)
    }

    #[test]
    fn written_then_read_in_any_string_type() {
        let tp: TraceParent = GOOD.parse().unwrap();
        let props = with_traceparent(BasicProperties::default(), &tp);
        assert_eq!(traceparent(&props), Some(Ok(tp)));
        for v in [
            AMQPValue::LongString(LongString::from(GOOD)),
            AMQPValue::ShortString(ShortString::from(GOOD)),
        ] {
            assert_eq!(traceparent(&with_header(v)), Some(Ok(tp)));
        }
    }

    #[test]
    fn missing_malformed_and_non_string_headers() {
        assert_eq!(traceparent(&BasicProperties::default()), None);
        let other = with_header(AMQPValue::LongLongInt(7));
        assert_eq!(traceparent(&other), Some(Err(TraceParentError::Shape)));
        let bad = with_header(AMQPValue::LongString(LongString::from(GOOD.to_uppercase())));
        assert_eq!(traceparent(&bad), Some(Err(TraceParentError::NotHex)));
        // Writing keeps the headers already there.
        let mut h = FieldTable::default();
        h.insert("x-other".into(), AMQPValue::LongLongInt(1));
        let props = BasicProperties::default().with_headers(h);
        let tp: TraceParent = GOOD.parse().unwrap();
        let both = with_traceparent(props, &tp);
        assert_eq!(both.headers().as_ref().map(|h| h.inner().len()), Some(2));
    }
}
