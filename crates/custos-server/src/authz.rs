//! Who may do what: one pure decision function over roles, grants and the
//! permission a route declares. No I/O; `guard` gathers the facts.
//!
//! | permission     | owner | contributor | reader | auditor | admin | support | support with live grant |
//! |----------------|:-----:|:-----------:|:------:|:-------:|:-----:|:-------:|:-----------------------:|
//! | WorkspaceView  |   ✓   |      ✓      |   ✓    |    ✓    |   ✓   |         |            ✓            |
//! | DataRead       |   ✓   |      ✓      |   ✓    |         |       |         |            ✓            |
//! | AgentEnroll    |   ✓   |      ✓      |        |         |   ✓   |         |                         |
//! | AgentManage    |   ✓   |             |        |         |   ✓   |         |                         |
//! | RoleManage     |   ✓   |             |        |         |   ✓   |         |                         |
//! | PolicyManage   |   ✓   |             |        |         |       |         |                         |
//! | WorkspaceDelete|   ✓   |             |        |         |   ✓   |         |                         |
//! | CaseOpen       |   ✓   |             |        |         |       |    ✓    |            ✓            |
//! | CaseView       |   ✓   |      ✓      |   ✓    |    ✓    |   ✓   |    ✓    |            ✓            |
//! | CaseClose      |   ✓   |             |        |         |       |    ✓    |            ✓            |
//! | AccessRequest  |       |             |        |         |       |    ✓    |            ✓            |
//! | AccessView     |   ✓   |             |        |    ✓    |   ✓   |    ✓    |            ✓            |
//! | AccessDecide   |   ✓   |             |        |         |       |         |                         |
//! | AuditRead      |   ✓   |             |        |    ✓    |   ✓   |         |                         |
//!
//! Service admins run the service: they never read workspace data (they can
//! grant themselves a workspace role, which the workspace's audit log then
//! shows). Support has no standing access to data: only a live grant (see
//! `lockbox`) adds read-only `WorkspaceView` and `DataRead`, and never on a
//! route that changes anything. A caller with no relation at all to a
//! workspace is told it does not exist ([`Decision::Hidden`]), exactly as if
//! it did not.

use custos_model::{AccessRequestId, ServiceRole, WorkspaceRole};

/// What a route needs from a bearer-token principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Perm {
    /// Service administration (workspaces, principals, metrics). No scope.
    ServiceAdmin,
    /// Any authenticated principal (whoami, own tokens, filtered listings).
    Authenticated,
    /// Revoke a token: its owner or a service admin.
    TokenRevoke,
    /// See a workspace's settings.
    WorkspaceView,
    /// Read a workspace's data (tables, query).
    DataRead,
    /// Issue enrollment keys.
    AgentEnroll,
    /// List a workspace's enrolled agents and revoke them (owners and
    /// service admins: revocation cuts a host off at once).
    AgentManage,
    /// List, grant and revoke workspace roles.
    RoleManage,
    /// Change workspace policy (lockbox; maximum level and categories stored;
    /// the server-side redaction policy).
    PolicyManage,
    /// Open a support case.
    CaseOpen,
    /// See cases.
    CaseView,
    /// Close a case.
    CaseClose,
    /// Ask for case-scoped access (support).
    AccessRequest,
    /// See access requests and grants.
    AccessView,
    /// Approve or deny access requests.
    AccessDecide,
    /// Delete the workspace (its keys, then its bytes): owners and service
    /// admins (a tenant's contract ends).
    WorkspaceDelete,
    /// Read the workspace's audit records, the counts of events refused at
    /// ingest, the redaction policy and the counts of what redaction removed.
    AuditRead,
}

impl Perm {
    /// Every permission (for tests that walk them).
    pub const ALL: [Perm; 17] = [
        Perm::ServiceAdmin,
        Perm::Authenticated,
        Perm::TokenRevoke,
        Perm::WorkspaceView,
        Perm::DataRead,
        Perm::AgentEnroll,
        Perm::AgentManage,
        Perm::RoleManage,
        Perm::PolicyManage,
        Perm::WorkspaceDelete,
        Perm::CaseOpen,
        Perm::CaseView,
        Perm::CaseClose,
        Perm::AccessRequest,
        Perm::AccessView,
        Perm::AccessDecide,
        Perm::AuditRead,
    ];

    /// Whether the permission is checked against a workspace.
    pub fn workspace_scoped(self) -> bool {
        !matches!(self, Perm::ServiceAdmin | Perm::Authenticated | Perm::TokenRevoke)
    }
}

/// Whether a workspace role carries a permission.
pub fn role_allows(role: WorkspaceRole, perm: Perm) -> bool {
    use Perm::*;
    use WorkspaceRole::*;
    match role {
        Owner => matches!(
            perm,
            WorkspaceView
                | DataRead
                | AgentEnroll
                | AgentManage
                | RoleManage
                | PolicyManage
                | WorkspaceDelete
                | CaseOpen
                | CaseView
                | CaseClose
                | AccessView
                | AccessDecide
                | AuditRead
        ),
        Contributor => matches!(perm, WorkspaceView | DataRead | AgentEnroll | CaseView),
        Reader => matches!(perm, WorkspaceView | DataRead | CaseView),
        Auditor => matches!(perm, WorkspaceView | CaseView | AccessView | AuditRead),
    }
}

/// Whether a service role carries a permission, on any workspace, without a grant.
pub fn service_allows(role: ServiceRole, perm: Perm) -> bool {
    use Perm::*;
    match role {
        ServiceRole::Admin => matches!(
            perm,
            ServiceAdmin
                | Authenticated
                | TokenRevoke
                | WorkspaceView
                | AgentEnroll
                | AgentManage
                | RoleManage
                | WorkspaceDelete
                | CaseView
                | AccessView
                | AuditRead
        ),
        ServiceRole::Support => matches!(perm, Authenticated | CaseOpen | CaseView | CaseClose | AccessRequest | AccessView),
    }
}

/// What a live lockbox grant adds: read-only access to its workspace.
pub fn grant_allows(perm: Perm) -> bool {
    matches!(perm, Perm::WorkspaceView | Perm::DataRead)
}

/// The facts about a caller relative to one workspace.
#[derive(Clone, Debug, Default)]
pub struct Subject {
    /// Service role, if any.
    pub service_role: Option<ServiceRole>,
    /// Roles in the target workspace.
    pub roles: Vec<WorkspaceRole>,
    /// A live lockbox grant on the target workspace, if any.
    pub live_grant: Option<AccessRequestId>,
}

/// The outcome of a permission check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, acting as `role`, through `grant` when a lockbox grant was needed.
    Allow {
        /// The role name the request acts under (for the audit record).
        role: &'static str,
        /// The grant used, if the permission came from one.
        grant: Option<AccessRequestId>,
    },
    /// Known to the caller, but not allowed; the message says why.
    Forbidden(&'static str),
    /// The caller has no relation to the target: answer as if it did not exist.
    Hidden,
}

/// Decide whether `subject` may use `perm` on a route that changes state
/// when `mutating`. For workspace-scoped permissions `subject` describes the
/// caller's relation to that workspace.
pub fn decide(subject: &Subject, perm: Perm, mutating: bool) -> Decision {
    if perm == Perm::Authenticated {
        return Decision::Allow { role: subject.service_role.map_or("principal", ServiceRole::as_str), grant: None };
    }
    if let Some(role) = subject.roles.iter().copied().find(|r| role_allows(*r, perm)) {
        return Decision::Allow { role: role.as_str(), grant: None };
    }
    if let Some(sr) = subject.service_role {
        if service_allows(sr, perm) {
            return Decision::Allow { role: sr.as_str(), grant: None };
        }
    }
    if let (Some(grant), Some(ServiceRole::Support)) = (subject.live_grant, subject.service_role) {
        if grant_allows(perm) && !mutating {
            return Decision::Allow { role: "support", grant: Some(grant) };
        }
    }
    if !perm.workspace_scoped() {
        return Decision::Forbidden("this needs the service admin role");
    }
    let related = !subject.roles.is_empty() || subject.service_role.is_some() || subject.live_grant.is_some();
    if !related {
        return Decision::Hidden;
    }
    Decision::Forbidden(match (subject.service_role, perm) {
        (Some(ServiceRole::Support), Perm::DataRead | Perm::WorkspaceView) => {
            "support has no standing access: request access on a case and wait for the workspace owner's approval"
        }
        (Some(ServiceRole::Admin), Perm::DataRead) => {
            "service admins do not read workspace data; a workspace role is needed"
        }
        _ => "your roles in this workspace do not allow this",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(service_role: Option<ServiceRole>, roles: &[WorkspaceRole], grant: bool) -> Subject {
        Subject { service_role, roles: roles.to_vec(), live_grant: grant.then(AccessRequestId::new) }
    }

    #[test]
    fn a_stranger_is_told_nothing_exists() {
        for perm in Perm::ALL.into_iter().filter(|p| p.workspace_scoped()) {
            assert_eq!(decide(&Subject::default(), perm, false), Decision::Hidden, "{perm:?}");
            assert_eq!(decide(&Subject::default(), perm, true), Decision::Hidden, "{perm:?}");
        }
    }

    #[test]
    fn support_reads_nothing_without_a_grant_and_only_reads_with_one() {
        let without = subject(Some(ServiceRole::Support), &[], false);
        assert!(matches!(decide(&without, Perm::DataRead, false), Decision::Forbidden(_)));
        assert!(matches!(decide(&without, Perm::WorkspaceView, false), Decision::Forbidden(_)));
        let with = subject(Some(ServiceRole::Support), &[], true);
        assert!(matches!(decide(&with, Perm::DataRead, false), Decision::Allow { grant: Some(_), .. }));
        assert!(matches!(decide(&with, Perm::DataRead, true), Decision::Forbidden(_)), "grants are read-only");
        for perm in [Perm::AgentEnroll, Perm::AgentManage, Perm::RoleManage, Perm::PolicyManage, Perm::AccessDecide, Perm::AuditRead] {
            assert!(matches!(decide(&with, perm, true), Decision::Forbidden(_)), "{perm:?}");
        }
    }

    #[test]
    fn admins_manage_but_do_not_read_data() {
        let admin = subject(Some(ServiceRole::Admin), &[], false);
        assert!(matches!(decide(&admin, Perm::DataRead, false), Decision::Forbidden(_)));
        assert!(matches!(decide(&admin, Perm::RoleManage, true), Decision::Allow { role: "admin", .. }));
        assert!(matches!(decide(&admin, Perm::AccessDecide, true), Decision::Forbidden(_)), "the customer decides");
    }

    #[test]
    fn readers_and_auditors_hold_no_mutating_permission() {
        let mutating = [
            Perm::AgentEnroll,
            Perm::AgentManage,
            Perm::RoleManage,
            Perm::PolicyManage,
            Perm::CaseOpen,
            Perm::CaseClose,
            Perm::AccessRequest,
            Perm::AccessDecide,
        ];
        for role in [WorkspaceRole::Reader, WorkspaceRole::Auditor] {
            for perm in mutating {
                assert!(!role_allows(role, perm), "{role} {perm:?}");
            }
        }
        assert!(!role_allows(WorkspaceRole::Auditor, Perm::DataRead));
    }

    #[test]
    fn only_owners_and_service_admins_manage_agents() {
        assert!(role_allows(WorkspaceRole::Owner, Perm::AgentManage));
        for role in [WorkspaceRole::Contributor, WorkspaceRole::Reader, WorkspaceRole::Auditor] {
            assert!(!role_allows(role, Perm::AgentManage), "{role}");
        }
        assert!(service_allows(ServiceRole::Admin, Perm::AgentManage));
        assert!(!service_allows(ServiceRole::Support, Perm::AgentManage));
        assert!(!grant_allows(Perm::AgentManage));
    }

    #[test]
    fn service_permissions_are_forbidden_not_hidden() {
        let owner = subject(None, &[WorkspaceRole::Owner], false);
        assert!(matches!(decide(&owner, Perm::ServiceAdmin, true), Decision::Forbidden(_)));
        assert_eq!(decide(&owner, Perm::Authenticated, false), Decision::Allow { role: "principal", grant: None });
    }
}
