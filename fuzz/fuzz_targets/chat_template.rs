//! A chat template from bytes, compiled and rendered over a fixed conversation under the
//! limits (`file_limits`: source size, fuel, recursion, output size). Nothing may panic,
//! hang or overflow the stack.

#![no_main]

use lamina_sharding::chat::{ChatMessage, ChatTemplate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = ChatTemplate::new(src, "<s>", "</s>") else {
        return;
    };
    let messages = [
        ChatMessage::new("system", "You are helpful."),
        ChatMessage::new("user", "Hi {{ there }} {% raw %}"),
        ChatMessage::new("assistant", "Hello!"),
        ChatMessage::new("user", "Bye"),
    ];
    let _ = t.render(&messages, true);
    let _ = t.render(&messages[..1], false);
});
