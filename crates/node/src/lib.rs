use napi_derive::napi;
#[napi]
pub fn hello() -> u32 { dynamo_kv_core::hello() }
