//! The Cedar schema policies are validated against, in the human-readable
//! `.cedarschema` syntax.

use std::collections::BTreeMap;

use crate::args::{Shape, record_type};

/// The schema with `context.arguments` typed as `fields` (the attributes the
/// loaded policies examine).
pub fn render(fields: &BTreeMap<String, Shape>) -> String {
    let mut arguments = String::new();
    record_type(fields, 1, &mut arguments);
    format!(
        r#"// Bastion's Cedar schema. Policies are validated against it in strict mode.
namespace Bastion {{
  // The arguments of a call or get (empty for list and read): the attributes
  // the loaded policies examine, each optional, typed as the policies use
  // it. A value of another type is left out, as if absent.
  type Arguments = {arguments};

  type RequestContext = {{
    arguments: Arguments,
    // the time of the request, in unix seconds
    now: Long
  }};

  // A group of servers; a user's groups are its parents.
  entity Group;

  // The principal: id the user name.
  entity User in [Group] = {{
    // "admin", "manager", "user", "viewer", or "none" for a user without a role
    role: String
  }};

  // An MCP server: id its name; parents the groups that hold it.
  entity Server in [Group] = {{
    name: String,
    // the groups that hold it, for `principal in resource.server.groups`
    groups: Set<Group>
  }};

  // id "server__name"; name is the tool's name as its server knows it
  entity Tool in [Server] = {{
    name: String,
    server: Server
  }};

  // id "server__name"; name is the prompt's name as its server knows it
  entity Prompt in [Server] = {{
    name: String,
    server: Server
  }};

  // A resource or resource template: id "server+uri"; uri as its server
  // knows it
  entity Resource in [Server] = {{
    uri: String,
    server: Server
  }};

  // See an item in a list.
  action "list" appliesTo {{
    principal: User,
    resource: [Tool, Prompt, Resource],
    context: RequestContext
  }};

  action "call" appliesTo {{
    principal: User,
    resource: Tool,
    context: RequestContext
  }};

  action "read" appliesTo {{
    principal: User,
    resource: Resource,
    context: RequestContext
  }};

  action "get" appliesTo {{
    principal: User,
    resource: Prompt,
    context: RequestContext
  }};
}}
"#
    )
}
