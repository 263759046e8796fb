fn main() {
    println!("placeholder: see issue 6");
}
