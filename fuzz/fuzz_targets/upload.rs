fn main() {
    protogate::fuzz_logic::prepare();
    afl::fuzz!(|data: &[u8]| protogate::fuzz_logic::upload(data));
}
