fn main() {
    protogate::fuzz_logic::prepare();
    afl::fuzz!(|data: &[u8]| protogate::fuzz_logic::upstream_reply(data));
}
