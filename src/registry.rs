//! Event-type patterns, and the registry that maps an event type to its handlers.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::handler::{EventHandler, HandlerRegistration};

/// What a handler or a route subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pattern {
    /// Exactly one type, e.g. `user.created`.
    Exact(String),
    /// Every type in a group, written `user.*`; holds the prefix with its dot (`user.`).
    Group(String),
    /// Every type, written `*`.
    All,
}

/// Why the registry could not be built. Every one of these stops start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Nothing registered: the handlers crate was not linked into the binary.
    #[error(
        "no event handler is registered: the crate that registers them must be linked in; \
         add `use kinde_webhooks_handlers as _;` to your main.rs (and to integration tests)"
    )]
    Empty,
    /// A pattern is not `type.name`, `group.*` or `*`.
    #[error("handler {handler}: pattern {pattern:?} is malformed: {reason}")]
    BadPattern {
        /// The handler that declared it.
        handler: String,
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A handler subscribed to nothing.
    #[error("handler {0} has no patterns: give it at least one (`*` for every event)")]
    NoPatterns(String),
    /// Two handlers share a name; names key logs, metrics and the inbox.
    #[error(
        "two handlers are named {name:?} (in {first} and {second}): handler names must be unique"
    )]
    DuplicateName {
        /// The shared name.
        name: String,
        /// Where the first was registered.
        first: String,
        /// Where the second was registered.
        second: String,
    },
    /// A name that cannot be used as a key.
    #[error("handler name {0:?} is invalid: use 1 to 64 of a-z, 0-9, '-', '_' and '.'")]
    BadName(String),
    /// A handler asked for by name is not registered.
    #[error(
        "no handler named {name:?} is registered (registered: {known}); \
         check the name given to register_handler! and that its crate is linked in"
    )]
    NotRegistered {
        /// The name asked for.
        name: String,
        /// The names that are registered, comma-separated.
        known: String,
    },
}

/// Why a pattern is malformed, for [`RegistryError::BadPattern`] and config validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatternError(pub &'static str);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for PatternError {}

impl Pattern {
    /// Parse `user.created`, `user.*` or `*`. Segments are lowercase letters, digits and `_`.
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        if s == "*" {
            return Ok(Pattern::All);
        }
        let (body, group) = match s.strip_suffix(".*") {
            Some(prefix) => (prefix, true),
            None => (s, false),
        };
        if body.is_empty() {
            return Err(PatternError(
                "empty; write a type like `user.created`, a group like `user.*`, or `*`",
            ));
        }
        for segment in body.split('.') {
            if segment.is_empty() {
                return Err(PatternError(
                    "has an empty segment (two dots, or a leading or trailing dot)",
                ));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(PatternError(
                    "may hold only a-z, 0-9, '_' and '.', with `*` only as `*` or a final `.*`",
                ));
            }
        }
        Ok(if group {
            Pattern::Group(format!("{body}."))
        } else {
            Pattern::Exact(body.to_owned())
        })
    }

    /// Whether an event type falls under this pattern.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Pattern::Exact(t) => t == event_type,
            Pattern::Group(prefix) => {
                event_type.len() > prefix.len() && event_type.starts_with(prefix.as_str())
            }
            Pattern::All => true,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(t) => f.write_str(t),
            Pattern::Group(prefix) => write!(f, "{prefix}*"),
            Pattern::All => f.write_str("*"),
        }
    }
}

/// Whether any of `patterns` matches `event_type`.
pub fn any_matches(patterns: &[Pattern], event_type: &str) -> bool {
    patterns.iter().any(|p| p.matches(event_type))
}

/// One registered handler, ready to run.
#[derive(Clone)]
pub struct Entry {
    /// Its unique name.
    pub name: Arc<str>,
    /// What it subscribes to.
    pub patterns: Vec<Pattern>,
    /// Where it was registered: a module path, `explicit` for handlers given in code, or
    /// the config section that built it (`config: [[forward.nats]]`).
    pub module: String,
    /// The handler itself.
    pub handler: Arc<dyn EventHandler>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("patterns", &self.patterns)
            .field("module", &self.module)
            .finish_non_exhaustive()
    }
}

/// The handlers of this process, keyed by the patterns they subscribe to.
///
/// Built once at start-up, from `inventory` ([`Registry::from_inventory`]) or from an
/// explicit list ([`Registry::builder`]) so a test can run with only the handlers it names.
#[derive(Debug, Clone)]
pub struct Registry {
    entries: Vec<Entry>,
}

/// Collects handlers for [`Registry`]; checks happen in [`RegistryBuilder::build`].
#[derive(Debug, Default)]
pub struct RegistryBuilder {
    pending: Vec<Pending>,
    /// Names asked for with [`RegistryBuilder::inventory_named`] that are not registered.
    missing: Vec<String>,
}

/// A handler built at start-up from configuration (a `[[forward.nats]]`, say) rather than
/// registered in code. It goes through the same checks as every other handler, so its name
/// may not repeat an `inventory` handler's.
#[derive(Clone)]
pub struct ConfiguredHandler {
    /// Its name, from the config.
    pub name: String,
    /// Its patterns, as written in the config.
    pub patterns: Vec<String>,
    /// The config section it came from, shown in the handler table, e.g. `config: [[forward.nats]]`.
    pub source: String,
    /// The handler itself.
    pub handler: Arc<dyn EventHandler>,
}

impl fmt::Debug for ConfiguredHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfiguredHandler")
            .field("name", &self.name)
            .field("patterns", &self.patterns)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A handler as given, before its name and patterns are checked.
#[derive(Debug)]
struct Pending {
    name: String,
    patterns: Vec<String>,
    module: String,
    handler: Arc<dyn EventHandler>,
}

impl fmt::Debug for dyn EventHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn EventHandler")
    }
}

impl RegistryBuilder {
    /// Add a handler under `name` for `patterns`.
    pub fn handler<H: EventHandler>(self, name: &str, patterns: &[&str], handler: H) -> Self {
        self.handler_arc(name, patterns, Arc::new(handler))
    }

    /// Add an already shared handler (a test keeps its own `Arc` to inspect it).
    pub fn handler_arc(
        mut self,
        name: &str,
        patterns: &[&str],
        handler: Arc<dyn EventHandler>,
    ) -> Self {
        let patterns = patterns.iter().map(|p| (*p).to_owned()).collect();
        let module = "explicit".to_owned();
        self.pending.push(Pending {
            name: name.to_owned(),
            patterns,
            module,
            handler,
        });
        self
    }

    /// Add every handler registered through `inventory`.
    pub fn inventory(self) -> Self {
        self.inventory_where(|_| true)
    }

    /// Add the handlers registered through `inventory` under these names only (a test that
    /// runs some of the application's handlers); [`build`](Self::build) fails naming any
    /// name that is not registered.
    pub fn inventory_named(mut self, names: &[&str]) -> Self {
        let registered = || inventory::iter::<HandlerRegistration>.into_iter();
        for name in names {
            if !registered().any(|r| r.name == *name) {
                self.missing.push((*name).to_owned());
            }
        }
        self.inventory_where(|r| names.contains(&r.name))
    }

    fn inventory_where(mut self, keep: impl Fn(&HandlerRegistration) -> bool) -> Self {
        // By name: the order inventory yields them in depends on linking, and logs, `dev`
        // and `verify` should list them the same way every time.
        let mut registered: Vec<&HandlerRegistration> = inventory::iter::<HandlerRegistration>
            .into_iter()
            .filter(|r| keep(r))
            .collect();
        registered.sort_by_key(|r| r.name);
        for r in registered {
            let patterns = r.patterns.iter().map(|p| (*p).to_owned()).collect();
            let handler = Arc::from((r.make)());
            let (name, module) = (r.name.to_owned(), r.module.to_owned());
            self.pending.push(Pending {
                name,
                patterns,
                module,
                handler,
            });
        }
        self
    }

    /// Add handlers built from configuration (see [`crate::forward::Forwarders::handlers`]).
    pub fn configured(mut self, handlers: impl IntoIterator<Item = ConfiguredHandler>) -> Self {
        for h in handlers {
            self.pending.push(Pending {
                name: h.name,
                patterns: h.patterns,
                module: h.source,
                handler: h.handler,
            });
        }
        self
    }

    /// Check names and patterns, and build the registry.
    pub fn build(self) -> Result<Registry, RegistryError> {
        if let Some(name) = self.missing.into_iter().next() {
            let known: Vec<&str> = inventory::iter::<HandlerRegistration>
                .into_iter()
                .map(|r| r.name)
                .collect();
            return Err(RegistryError::NotRegistered {
                name,
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
        if self.pending.is_empty() {
            return Err(RegistryError::Empty);
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(self.pending.len());
        for Pending {
            name,
            patterns,
            module,
            handler,
        } in self.pending
        {
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !valid_name {
                return Err(RegistryError::BadName(name));
            }
            if let Some(first) = entries.iter().find(|e| *e.name == *name) {
                return Err(RegistryError::DuplicateName {
                    name,
                    first: first.module.clone(),
                    second: module,
                });
            }
            if patterns.is_empty() {
                return Err(RegistryError::NoPatterns(name));
            }
            let parsed = patterns
                .iter()
                .map(|p| {
                    Pattern::parse(p).map_err(|e| RegistryError::BadPattern {
                        handler: name.clone(),
                        pattern: p.clone(),
                        reason: e.0,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            entries.push(Entry {
                name: name.into(),
                patterns: parsed,
                module,
                handler,
            });
        }
        Ok(Registry { entries })
    }
}

impl Registry {
    /// An empty builder.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// Every handler registered through `inventory`; an error when there is none.
    pub fn from_inventory() -> Result<Registry, RegistryError> {
        Registry::builder().inventory().build()
    }

    /// Wrap every handler (to trace or record its calls, say): `wrap` gets each entry and
    /// returns the handler to run in its place, under the same name and patterns.
    pub fn wrap(mut self, wrap: impl Fn(&Entry) -> Arc<dyn EventHandler>) -> Registry {
        for entry in &mut self.entries {
            entry.handler = wrap(entry);
        }
        self
    }

    /// All entries, in registration order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The handlers subscribed to `event_type`.
    pub fn handlers_for<'a>(&'a self, event_type: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| any_matches(&e.patterns, event_type))
    }

    /// The table pattern -> handler names, sorted by pattern, for logs and the CLI.
    pub fn table(&self) -> BTreeMap<String, Vec<String>> {
        let mut table: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in &self.entries {
            let mut seen = HashSet::new();
            for p in &e.patterns {
                if seen.insert(p) {
                    table
                        .entry(p.to_string())
                        .or_default()
                        .push(e.name.to_string());
                }
            }
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, Event, HandlerError};

    struct Noop;
    #[async_trait::async_trait]
    impl EventHandler for Noop {
        async fn handle(&self, _: &Event, _: &Context) -> Result<(), HandlerError> {
            Ok(())
        }
    }

    #[test]
    fn patterns_parse_and_match() {
        assert_eq!(Pattern::parse("*").unwrap(), Pattern::All);
        let g = Pattern::parse("user.*").unwrap();
        assert!(g.matches("user.created") && !g.matches("user.") && !g.matches("users.created"));
        assert!(!g.matches("organization.created"));
        let e = Pattern::parse("access_request.created").unwrap();
        assert!(e.matches("access_request.created") && !e.matches("access_request.created.x"));
        for bad in [
            "",
            "user*",
            "*.created",
            "user..created",
            ".user",
            "User.created",
            "user.*.x",
            " user",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn empty_registry_is_an_error() {
        assert!(matches!(
            Registry::builder().build(),
            Err(RegistryError::Empty)
        ));
    }

    #[test]
    fn duplicate_names_bad_patterns_and_names_are_errors() {
        let r = Registry::builder()
            .handler("a", &["*"], Noop)
            .handler("a", &["user.*"], Noop)
            .build();
        assert!(matches!(r, Err(RegistryError::DuplicateName { .. })));
        let r = Registry::builder().handler("a", &["user*"], Noop).build();
        assert!(matches!(r, Err(RegistryError::BadPattern { .. })));
        let r = Registry::builder().handler("A b", &["*"], Noop).build();
        assert!(matches!(r, Err(RegistryError::BadName(_))));
        let r = Registry::builder().handler("a", &[], Noop).build();
        assert!(matches!(r, Err(RegistryError::NoPatterns(_))));
    }

    #[test]
    fn configured_handlers_are_checked_like_the_others() {
        let configured = |name: &str, pattern: &str| ConfiguredHandler {
            name: name.into(),
            patterns: vec![pattern.into()],
            source: "config: [[forward.nats]]".into(),
            handler: Arc::new(Noop),
        };
        let r = Registry::builder()
            .handler("nats", &["*"], Noop)
            .configured([configured("nats", "user.*")])
            .build();
        let message = r.unwrap_err().to_string();
        assert!(
            message.contains("\"nats\"") && message.contains("config: [[forward.nats]]"),
            "{message}"
        );
        let r = Registry::builder()
            .configured([configured("fwd", "user*")])
            .build();
        assert!(matches!(r, Err(RegistryError::BadPattern { .. })));
        let r = Registry::builder()
            .handler("a", &["*"], Noop)
            .configured([configured("fwd", "user.*")])
            .build()
            .unwrap();
        let e = r.handlers_for("user.created").nth(1).unwrap();
        assert_eq!(
            (&*e.name, e.module.as_str()),
            ("fwd", "config: [[forward.nats]]")
        );
    }

    #[test]
    fn handlers_for_and_table() {
        let r = Registry::builder()
            .handler("all", &["*"], Noop)
            .handler("users", &["user.*"], Noop)
            .handler("created", &["user.created"], Noop)
            .build()
            .unwrap();
        let names: Vec<_> = r
            .handlers_for("user.created")
            .map(|e| e.name.to_string())
            .collect();
        assert_eq!(names, ["all", "users", "created"]);
        let names: Vec<_> = r
            .handlers_for("role.created")
            .map(|e| e.name.to_string())
            .collect();
        assert_eq!(names, ["all"]);
        assert_eq!(r.table()["user.*"], ["users"]);
    }
}
