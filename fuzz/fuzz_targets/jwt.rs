fn main() {
    afl::fuzz!(|data: &[u8]| protogate::fuzz_logic::jwt(data));
}
