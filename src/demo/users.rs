//! `acme.users.v1.UserService`: users addressed by hierarchical resource names
//! (`tenants/{tenant}/users/{user}`), the case for `{name=tenants/*/users/*}` templates.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{invalid_argument, store::Store, violation, PageRequest};
use crate::pb::{
    acme::users::v1::{
        user_service_server::UserService, CreateUserRequest, GetUserRequest, ListUsersRequest,
        ListUsersResponse, User,
    },
    google::rpc::bad_request::FieldViolation,
};

/// The user API over the shared store.
#[derive(Debug)]
pub(super) struct Users {
    store: Arc<Store>,
}

impl Users {
    pub(super) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

/// Whether `segment` can be one segment of a resource name.
fn is_segment(segment: &str) -> bool {
    !segment.is_empty() && !segment.contains('/')
}

/// Whether `parent` is `tenants/{tenant}`.
fn is_parent(parent: &str) -> bool {
    parent.strip_prefix("tenants/").is_some_and(is_segment)
}

/// Whether `name` is `tenants/{tenant}/users/{user}`.
fn is_user_name(name: &str) -> bool {
    name.rsplit_once("/users/")
        .is_some_and(|(parent, user)| is_parent(parent) && is_segment(user))
}

/// Whether `id` is a valid new user id: 1 to 63 lowercase letters, digits or '-'.
fn is_user_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The violation for a `parent` that is not `tenants/{tenant}`, if it is not.
fn parent_violation(parent: &str) -> Option<FieldViolation> {
    (!is_parent(parent)).then(|| violation("parent", "must look like tenants/{tenant}"))
}

#[tonic::async_trait]
impl UserService for Users {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let name = request.into_inner().name;
        if !is_user_name(&name) {
            return Err(invalid_argument([violation(
                "name",
                "must look like tenants/{tenant}/users/{user}",
            )]));
        }
        Ok(Response::new(self.store.user(&name)?))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let request = request.into_inner();
        if let Some(violation) = parent_violation(&request.parent) {
            return Err(invalid_argument([violation]));
        }
        let page = PageRequest::parse(request.page_size, &request.page_token)?
            .apply(self.store.users(&request.parent)?);
        Ok(Response::new(ListUsersResponse {
            users: page.items,
            next_page_token: page.next_page_token,
        }))
    }

    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let CreateUserRequest {
            parent,
            user_id,
            user,
        } = request.into_inner();
        let mut violations: Vec<_> = parent_violation(&parent).into_iter().collect();
        if !is_user_id(&user_id) {
            violations.push(violation(
                "user_id",
                "must be 1 to 63 lowercase letters, digits or '-'",
            ));
        }
        if !violations.is_empty() {
            return Err(invalid_argument(violations));
        }
        let user = User {
            name: format!("{parent}/users/{user_id}"),
            ..user.unwrap_or_default()
        };
        Ok(Response::new(self.store.create_user(user)?))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::demo::testing;

    fn service() -> Users {
        Users::new(Arc::new(Store::seeded()))
    }

    async fn get(service: &Users, name: &str) -> Result<User, Status> {
        service
            .get_user(Request::new(GetUserRequest { name: name.into() }))
            .await
            .map(Response::into_inner)
    }

    async fn list(
        service: &Users,
        parent: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<ListUsersResponse, Status> {
        let request = ListUsersRequest {
            parent: parent.into(),
            page_size,
            page_token: page_token.into(),
        };
        service
            .list_users(Request::new(request))
            .await
            .map(Response::into_inner)
    }

    async fn create(
        service: &Users,
        parent: &str,
        user_id: &str,
        user: Option<User>,
    ) -> Result<User, Status> {
        let request = CreateUserRequest {
            parent: parent.into(),
            user_id: user_id.into(),
            user,
        };
        service
            .create_user(Request::new(request))
            .await
            .map(Response::into_inner)
    }

    fn names(response: &ListUsersResponse) -> Vec<&str> {
        response.users.iter().map(|u| u.name.as_str()).collect()
    }

    #[tokio::test]
    async fn get_returns_seeded_users() {
        let alice = get(&service(), "tenants/acme/users/alice").await.unwrap();
        assert_eq!(
            (alice.display_name.as_str(), alice.email.as_str()),
            ("Alice Adams", "alice@acme.example")
        );
        assert_eq!(alice.roles, ["admin", "buyer"]);
        assert_eq!(
            get(&service(), "tenants/globex/users/carol")
                .await
                .unwrap()
                .roles,
            ["buyer"]
        );
    }

    #[tokio::test]
    async fn get_rejects_malformed_names_and_reports_missing_users() {
        let service = service();
        for name in [
            "",
            "alice",
            "tenants/acme",
            "tenants//users/alice",
            "tenants/acme/users/",
            "tenants/acme/users/a/b",
            "orgs/acme/users/alice",
        ] {
            assert_eq!(
                testing::bad_fields(&get(&service, name).await.unwrap_err()),
                ["name"],
                "{name}"
            );
        }
        let missing = get(&service, "tenants/acme/users/carol").await.unwrap_err();
        assert_eq!(
            (missing.code(), missing.message()),
            (
                Code::NotFound,
                "user \"tenants/acme/users/carol\" not found"
            )
        );
    }

    #[tokio::test]
    async fn list_pages_through_one_tenant() {
        let service = service();
        let first = list(&service, "tenants/acme", 1, "").await.unwrap();
        assert_eq!(names(&first), ["tenants/acme/users/alice"]);
        let second = list(&service, "tenants/acme", 1, &first.next_page_token)
            .await
            .unwrap();
        assert_eq!(names(&second), ["tenants/acme/users/bob"]);
        assert!(second.next_page_token.is_empty());
        assert_eq!(
            names(&list(&service, "tenants/globex", 0, "").await.unwrap()),
            ["tenants/globex/users/carol"]
        );
        assert!(list(&service, "tenants/initech", 0, "")
            .await
            .unwrap()
            .users
            .is_empty());
    }

    #[tokio::test]
    async fn list_rejects_malformed_parents_and_page_requests() {
        let service = service();
        for parent in ["", "tenants/", "acme", "tenants/acme/users"] {
            assert_eq!(
                testing::bad_fields(&list(&service, parent, 0, "").await.unwrap_err()),
                ["parent"],
                "{parent}"
            );
        }
        assert_eq!(
            testing::bad_fields(&list(&service, "tenants/acme", -1, "").await.unwrap_err()),
            ["page_size"]
        );
        assert_eq!(
            testing::bad_fields(&list(&service, "tenants/acme", 0, "?").await.unwrap_err()),
            ["page_token"]
        );
    }

    #[tokio::test]
    async fn create_names_and_stamps_the_user() {
        let service = service();
        let user = User {
            name: "ignored".into(),
            display_name: "Dave".into(),
            roles: vec!["buyer".into()],
            ..Default::default()
        };
        let created = create(&service, "tenants/acme", "dave-2", Some(user))
            .await
            .unwrap();
        assert_eq!(
            (created.name.as_str(), created.display_name.as_str()),
            ("tenants/acme/users/dave-2", "Dave")
        );
        assert!(created.create_time.is_some());
        assert_eq!(
            get(&service, "tenants/acme/users/dave-2").await.unwrap(),
            created
        );
        assert_eq!(
            names(&list(&service, "tenants/acme", 0, "").await.unwrap()).len(),
            3
        );
        let fresh_tenant = create(&service, "tenants/initech", &"a".repeat(63), None)
            .await
            .unwrap();
        assert_eq!(
            fresh_tenant.name,
            format!("tenants/initech/users/{}", "a".repeat(63))
        );
    }

    #[tokio::test]
    async fn create_rejects_taken_names_and_bad_ids() {
        let service = service();
        let taken = create(&service, "tenants/acme", "bob", None)
            .await
            .unwrap_err();
        assert_eq!(
            (taken.code(), taken.message()),
            (
                Code::AlreadyExists,
                "user \"tenants/acme/users/bob\" already exists"
            )
        );
        for user_id in ["", "Bob", "bob_1", "bob/x", &"a".repeat(64)] {
            assert_eq!(
                testing::bad_fields(
                    &create(&service, "tenants/acme", user_id, None)
                        .await
                        .unwrap_err()
                ),
                ["user_id"],
                "{user_id}"
            );
        }
        assert_eq!(
            testing::bad_fields(&create(&service, "acme", "", None).await.unwrap_err()),
            ["parent", "user_id"]
        );
    }
}
