//! The subjects of the ticketing stack. The strings are fixed by the Node services.

use std::fmt;

/// A subject on the ticketing stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    TicketCreated,
    TicketUpdated,
    OrderCreated,
    OrderCancelled,
    ExpirationComplete,
    PaymentCreated,
}

impl Subject {
    /// Every subject, in the order of docs/contract.md §1.1.
    pub const ALL: [Subject; 6] = [
        Subject::TicketCreated,
        Subject::TicketUpdated,
        Subject::OrderCreated,
        Subject::OrderCancelled,
        Subject::ExpirationComplete,
        Subject::PaymentCreated,
    ];

    /// The exact string on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Subject::TicketCreated => "ticket:created",
            Subject::TicketUpdated => "ticket:updated",
            Subject::OrderCreated => "order:created",
            Subject::OrderCancelled => "order:cancelled",
            Subject::ExpirationComplete => "expiration:complete",
            Subject::PaymentCreated => "payment:created",
        }
    }

    /// A token usable in consumer names (`ticket:created` → `ticket-created`).
    pub fn token(self) -> String {
        self.as_str().replace(':', "-")
    }

    /// The subject whose string is `s`, if any.
    pub fn parse(s: &str) -> Option<Subject> {
        Subject::ALL
            .into_iter()
            .find(|subject| subject.as_str() == s)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_the_node_stack_strings() {
        let strings: Vec<_> = Subject::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            strings,
            [
                "ticket:created",
                "ticket:updated",
                "order:created",
                "order:cancelled",
                "expiration:complete",
                "payment:created"
            ]
        );
        for subject in Subject::ALL {
            assert_eq!(Subject::parse(subject.as_str()), Some(subject));
        }
        assert_eq!(Subject::parse("order:updated"), None);
        assert_eq!(Subject::OrderCreated.token(), "order-created");
    }
}
