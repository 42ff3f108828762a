//! The command registry: one table of typed commands that answers dispatch,
//! `query-commands` and `query-qmp-schema`, so what is introspected is exactly what runs.
//!
//! A command is registered with its argument type `A` (a `QmpType` + `Deserialize`,
//! unknown members refused) and return type `R` (`QmpType` + `Serialize`). Dispatch
//! validates the arguments against `A::schema()` (QEMU's texts), deserializes them,
//! runs the handler and serializes the result; the schema entry is built from the same
//! `A` and `R`.
//!
//! The registry owns the table and knows no command: `commands` (which also provides
//! `Registry::with_core`) and `hmp` depend on it, never the reverse. The one command
//! name it must know, `qmp_capabilities` (the only one allowed before negotiation), is
//! defined here.

use crate::error::Error;
use crate::events::EventBus;
use crate::machine::{Machine, VersionInfo};
use crate::qmp_error::{ErrorClass, QmpError};
use crate::runstate::VmState;
use crate::schema::{self, Entity, QmpType, SchemaFn};
use crate::session::Negotiation;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The negotiation command, the only one a session may run before negotiating.
pub const QMP_CAPABILITIES: &str = "qmp_capabilities";

/// What a handler can reach while it runs.
pub struct CommandContext<'a> {
    pub machine: &'a mut dyn Machine,
    /// Run state and actions.
    pub vm: &'a mut VmState,
    /// Events raised here are delivered before the command's reply.
    pub events: &'a mut EventBus,
    /// The negotiation state of the session that sent the command.
    pub session: &'a mut Negotiation,
    pub registry: &'a Registry,
    pub version: &'a VersionInfo,
    /// Whether query-qmp-schema masks type names (QEMU's default).
    pub mask_schema: bool,
}

type Handler =
    dyn Fn(&mut CommandContext<'_>, Map<String, Value>) -> Result<Value, QmpError> + Send + Sync;

/// One registered command.
pub struct CommandDef {
    name: &'static str,
    args: SchemaFn,
    ret: SchemaFn,
    allow_oob: bool,
    enabled: bool,
    features: Vec<&'static str>,
    handler: Box<Handler>,
}

impl std::fmt::Debug for CommandDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandDef")
            .field("name", &self.name)
            .field("allow_oob", &self.allow_oob)
            .field("enabled", &self.enabled)
            .field("features", &self.features)
            .finish()
    }
}

impl CommandDef {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The command may be sent with `exec-oob` (shown as `allow-oob` in the schema).
    pub fn allow_oob(&mut self) -> &mut Self {
        self.allow_oob = true;
        self
    }

    /// Schema features, e.g. `deprecated`, `unstable`.
    pub fn features(&mut self, features: &[&'static str]) -> &mut Self {
        self.features = features.to_vec();
        self
    }

    /// A disabled command stays listed but answers CommandNotFound (QEMU's
    /// "disabled for this instance").
    pub fn set_enabled(&mut self, enabled: bool) -> &mut Self {
        self.enabled = enabled;
        self
    }

    pub fn is_oob_allowed(&self) -> bool {
        self.allow_oob
    }
}

/// All commands and events of the monitor.
#[derive(Default, Debug)]
pub struct Registry {
    commands: Vec<CommandDef>,
    index: HashMap<&'static str, usize>,
    events: Vec<(&'static str, SchemaFn)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `name` with a typed handler.
    pub fn register<A, R, F>(
        &mut self,
        name: &'static str,
        handler: F,
    ) -> Result<&mut CommandDef, Error>
    where
        A: QmpType + DeserializeOwned + 'static,
        R: QmpType + Serialize + 'static,
        F: Fn(&mut CommandContext<'_>, A) -> Result<R, QmpError> + Send + Sync + 'static,
    {
        if self.index.contains_key(name) {
            return Err(Error::DuplicateCommand(name.to_string()));
        }
        let handler = move |ctx: &mut CommandContext<'_>, args: Map<String, Value>| {
            let args: A = schema::parse_args(args)?;
            let ret = handler(ctx, args)?;
            serde_json::to_value(ret).map_err(|e| {
                QmpError::generic(format!("internal error: cannot serialize the reply: {e}"))
            })
        };
        self.index.insert(name, self.commands.len());
        self.commands.push(CommandDef {
            name,
            args: A::schema,
            ret: R::schema,
            allow_oob: false,
            enabled: true,
            features: Vec::new(),
            handler: Box::new(handler),
        });
        let last = self.commands.len() - 1;
        Ok(&mut self.commands[last])
    }

    /// Declares an event and the type of its `data`, for introspection.
    pub fn register_event(&mut self, name: &'static str, data: SchemaFn) -> Result<(), Error> {
        if self.events.iter().any(|(n, _)| *n == name) {
            return Err(Error::DuplicateEvent(name.to_string()));
        }
        self.events.push((name, data));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&CommandDef> {
        self.index.get(name).map(|&i| &self.commands[i])
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut CommandDef> {
        self.index.get(name).map(|&i| &mut self.commands[i])
    }

    /// Registered command names, in registration order.
    pub fn command_names(&self) -> Vec<&'static str> {
        self.commands.iter().map(|c| c.name).collect()
    }

    /// Registered event names, in registration order.
    pub fn event_names(&self) -> Vec<&'static str> {
        self.events.iter().map(|(n, _)| *n).collect()
    }

    /// The `query-qmp-schema` list.
    pub fn introspect(&self, mask: bool) -> Vec<Value> {
        let mut entities: Vec<Entity<'_>> = self
            .commands
            .iter()
            .map(|c| Entity::Command {
                name: c.name,
                args: c.args,
                ret: c.ret,
                allow_oob: c.allow_oob,
                features: &c.features,
            })
            .collect();
        entities.extend(
            self.events
                .iter()
                .map(|(name, data)| Entity::Event { name, data: *data }),
        );
        schema::introspect(&entities, mask)
    }

    /// Runs one validated request (§5.1 from the command lookup on). In negotiation mode
    /// only `qmp_capabilities` exists, and every CommandNotFound carries QEMU's fixed
    /// negotiation text.
    pub fn dispatch(
        &self,
        name: &str,
        args: Map<String, Value>,
        oob: bool,
        ctx: &mut CommandContext<'_>,
    ) -> Result<Value, QmpError> {
        let negotiating = !ctx.session.negotiated;
        let result = self.lookup_and_run(name, args, oob, negotiating, ctx);
        match result {
            Err(e) if negotiating && e.class == ErrorClass::CommandNotFound => {
                Err(QmpError::command_not_found(
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                ))
            }
            other => other,
        }
    }

    fn lookup_and_run(
        &self,
        name: &str,
        args: Map<String, Value>,
        oob: bool,
        negotiating: bool,
        ctx: &mut CommandContext<'_>,
    ) -> Result<Value, QmpError> {
        let cmd = self
            .get(name)
            .filter(|_| !negotiating || name == QMP_CAPABILITIES)
            .ok_or_else(|| {
                QmpError::command_not_found(format!("The command {name} has not been found"))
            })?;
        if !cmd.enabled {
            return Err(QmpError::command_not_found(format!(
                "The command {name} has been disabled for this instance"
            )));
        }
        if oob && !cmd.allow_oob {
            return Err(QmpError::generic(format!(
                "The command {name} does not support OOB"
            )));
        }
        (cmd.handler)(ctx, args)
    }
}
