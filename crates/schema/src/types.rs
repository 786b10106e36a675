//! The closed set of event types of the contract, and what each one is about.

use std::fmt;
use std::str::FromStr;

use crate::DecodeError;

/// What kind of document an event is about; one stored procedure pair each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventFamily {
    Conversation,
    Message,
    Block,
    FollowEdge,
}

/// What happened to the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! event_types {
    ($( $variant:ident => $name:literal, $family:ident, $op:ident; )*) => {
        /// Every event type of the contract. Anything else is rejected.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType { $( $variant, )* }

        impl EventType {
            /// All types, in contract order.
            pub const ALL: &'static [EventType] = &[ $( EventType::$variant, )* ];

            /// The CloudEvents `type` attribute.
            pub fn as_str(self) -> &'static str {
                match self { $( EventType::$variant => $name, )* }
            }

            pub fn family(self) -> EventFamily {
                match self { $( EventType::$variant => EventFamily::$family, )* }
            }

            pub fn op(self) -> Op {
                match self { $( EventType::$variant => Op::$op, )* }
            }
        }

        impl FromStr for EventType {
            type Err = DecodeError;
            fn from_str(s: &str) -> Result<Self, DecodeError> {
                match s {
                    $( $name => Ok(EventType::$variant), )*
                    other => Err(DecodeError::UnknownType(truncate(other, 128))),
                }
            }
        }
    };
}

event_types! {
    DmConversationCreate => "dm.conversation.create", Conversation, Create;
    DmConversationUpdate => "dm.conversation.update", Conversation, Update;
    DmMessageCreate => "dm.message.create", Message, Create;
    DmMessageUpdate => "dm.message.update", Message, Update;
    DmMessageDelete => "dm.message.delete", Message, Delete;
    DmBlockCreate => "dm.block.create", Block, Create;
    DmBlockUpdate => "dm.block.update", Block, Update;
    DmBlockDelete => "dm.block.delete", Block, Delete;
    FollowEdgeCreate => "follow.edge.create", FollowEdge, Create;
    FollowEdgeUpdate => "follow.edge.update", FollowEdge, Update;
    FollowEdgeDelete => "follow.edge.delete", FollowEdge, Delete;
}

impl EventType {
    /// The type for `family` and `op`, if the contract has one (conversations have no delete).
    pub fn of(family: EventFamily, op: Op) -> Option<EventType> {
        EventType::ALL
            .iter()
            .copied()
            .find(|t| t.family() == family && t.op() == op)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Cut untrusted text for inclusion in an error message.
pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max_chars).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_name() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), *t);
            assert_eq!(EventType::of(t.family(), t.op()), Some(*t));
        }
        assert_eq!(EventType::ALL.len(), 11);
    }

    #[test]
    fn unknown_type_is_named() {
        let err = "dm.message.created".parse::<EventType>().unwrap_err();
        assert_eq!(err.to_string(), "unknown event type `dm.message.created`");
    }
}
