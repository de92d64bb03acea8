// The order every on-device argmax keeps: (value, id) pairs by value, ties to the lower id;
// NONE (no candidate) loses to any id. The sampler's and the router's workgroup trees both
// merge their pairs with it, so they pick what the reference's scan in id order picks.
fn pair_wins(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return i != 0xffffffffu && (bi == 0xffffffffu || v > bv || (v == bv && i < bi));
}
