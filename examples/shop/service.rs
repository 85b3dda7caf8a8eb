//! `acme.shop.v1.ShopService` over an in-memory list: the gRPC server a
//! service team writes, with code generated from `shop.proto` (by build.rs,
//! with protox). protogate puts REST in front of it without any of this code.

use std::{
    collections::BTreeMap,
    sync::{PoisonError, RwLock},
};

use tonic::{Request, Response, Status};
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

/// Generated from `shop.proto`.
#[allow(clippy::all, clippy::pedantic, missing_debug_implementations)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/shop/mod.rs"));
}

use pb::acme::shop::v1::{
    shop_service_server::{ShopService, ShopServiceServer},
    CreateShopRequest, DeleteShopRequest, GetShopRequest, ListShopsRequest, ListShopsResponse,
    Shop,
};

/// The shops by id, and how many were created. A std lock, as in the demo:
/// held for a map operation, never across an `.await`.
#[derive(Debug, Default)]
pub struct Shops {
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    shops: BTreeMap<String, Shop>,
    created: u64,
}

impl Shops {
    /// Two shops to start with: s-1 (Lyon) and s-2 (Porto).
    pub fn seeded() -> Self {
        let shops = Self::default();
        for (name, city) in [("Corner Shop", "Lyon"), ("Harbour Books", "Porto")] {
            shops.create(name, city);
        }
        shops
    }

    /// The tonic service to serve.
    pub fn into_server(self) -> ShopServiceServer<Self> {
        ShopServiceServer::new(self)
    }

    /// gRPC server reflection (v1) of the shop's schema: what lets
    /// `protogate serve --discover URL` serve it without a descriptor set.
    pub fn reflection() -> ServerReflectionServer<impl ServerReflection> {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(include_bytes!("shop.binpb"))
            .build_v1()
            .expect("the committed shop.binpb is a valid descriptor set")
    }

    fn create(&self, name: &str, city: &str) -> Shop {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.created += 1;
        let shop = Shop {
            id: format!("s-{}", state.created),
            name: name.to_owned(),
            city: city.to_owned(),
        };
        state.shops.insert(shop.id.clone(), shop.clone());
        shop
    }

    fn with_shops<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Shop>) -> T) -> T {
        f(&mut self
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .shops)
    }
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("shop \"{id}\" not found"))
}

#[tonic::async_trait]
impl ShopService for Shops {
    async fn list_shops(
        &self,
        request: Request<ListShopsRequest>,
    ) -> Result<Response<ListShopsResponse>, Status> {
        let city = request.into_inner().city;
        let shops = self.with_shops(|shops| {
            shops
                .values()
                .filter(|shop| city.is_empty() || shop.city == city)
                .cloned()
                .collect()
        });
        Ok(Response::new(ListShopsResponse { shops }))
    }

    async fn get_shop(&self, request: Request<GetShopRequest>) -> Result<Response<Shop>, Status> {
        let id = request.into_inner().id;
        self.with_shops(|shops| shops.get(&id).cloned())
            .map(Response::new)
            .ok_or_else(|| not_found(&id))
    }

    async fn create_shop(
        &self,
        request: Request<CreateShopRequest>,
    ) -> Result<Response<Shop>, Status> {
        let shop = request.into_inner().shop.unwrap_or_default();
        if shop.name.is_empty() {
            return Err(Status::invalid_argument("a shop needs a name"));
        }
        Ok(Response::new(self.create(&shop.name, &shop.city)))
    }

    async fn delete_shop(
        &self,
        request: Request<DeleteShopRequest>,
    ) -> Result<Response<()>, Status> {
        let id = request.into_inner().id;
        self.with_shops(|shops| shops.remove(&id))
            .map(|_| Response::new(()))
            .ok_or_else(|| not_found(&id))
    }
}
