//! The FFI protocol definitions in `proto/livekit_ffi/` against the pinned library's own: every
//! message, field and enum value the bridge uses must exist in the descriptors shipped in the
//! wheel `livekit==1.2.1` with the same number, type and label, so that a library upgrade that
//! moves a field fails here rather than in a room. `scripts/fetch-livekit-ffi` (run by
//! `scripts/setup`) extracts those descriptors into `vendor/livekit-ffi/descriptors.bin`.

use std::collections::HashMap;

use livekit_bridge::room::ffi::proto::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

const SHIPPED: &str = "vendor/livekit-ffi/descriptors.bin";

#[derive(Default)]
struct Index {
    messages: HashMap<String, DescriptorProto>,
    enums: HashMap<String, EnumDescriptorProto>,
}

fn index(set: &FileDescriptorSet) -> Index {
    fn walk(prefix: &str, m: &DescriptorProto, idx: &mut Index) {
        let name = format!("{prefix}.{}", m.name());
        for n in &m.nested_type {
            walk(&name, n, idx);
        }
        for e in &m.enum_type {
            idx.enums.insert(format!("{name}.{}", e.name()), e.clone());
        }
        idx.messages.insert(name, m.clone());
    }
    let mut idx = Index::default();
    for f in &set.file {
        let prefix = format!(".{}", f.package());
        for m in &f.message_type {
            walk(&prefix, m, &mut idx);
        }
        for e in &f.enum_type {
            idx.enums
                .insert(format!("{prefix}.{}", e.name()), e.clone());
        }
    }
    idx
}

fn shipped() -> Index {
    let bytes = std::fs::read(SHIPPED).unwrap_or_else(|e| {
        panic!("{SHIPPED}: {e}; run scripts/fetch-livekit-ffi (scripts/setup runs it)")
    });
    index(&FileDescriptorSet::decode(bytes.as_slice()).expect("shipped descriptors"))
}

fn ours() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("our descriptors")
}

/// Every difference between our definitions and the library's, and how many fields were seen.
fn compare(ours: &Index, theirs: &Index) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut fields = 0;
    for (name, mine) in &ours.messages {
        let Some(real) = theirs.messages.get(name) else {
            problems.push(format!("message {name} is not in the library"));
            continue;
        };
        for f in &mine.field {
            fields += 1;
            match real.field.iter().find(|r| r.name() == f.name()) {
                None => problems.push(format!("{name}.{} is not in the library", f.name())),
                Some(r) => {
                    let same = r.number() == f.number()
                        && r.r#type() == f.r#type()
                        && r.label() == f.label()
                        && r.type_name() == f.type_name()
                        && r.oneof_index.is_some() == f.oneof_index.is_some();
                    if !same {
                        problems.push(format!(
                            "{name}.{}: ours is {} {:?} {:?} {}, the library's is {} {:?} {:?} {}",
                            f.name(),
                            f.number(),
                            f.label(),
                            f.r#type(),
                            f.type_name(),
                            r.number(),
                            r.label(),
                            r.r#type(),
                            r.type_name()
                        ));
                    }
                }
            }
        }
    }
    for (name, mine) in &ours.enums {
        let Some(real) = theirs.enums.get(name) else {
            problems.push(format!("enum {name} is not in the library"));
            continue;
        };
        for v in &mine.value {
            if !real
                .value
                .iter()
                .any(|r| r.name() == v.name() && r.number() == v.number())
            {
                problems.push(format!(
                    "{name}.{} = {} is not in the library",
                    v.name(),
                    v.number()
                ));
            }
        }
    }
    problems.sort();
    (problems, fields)
}

#[test]
fn ffi_definitions_match_the_pinned_library() {
    let theirs = shipped();
    assert!(
        theirs.messages.len() > 300,
        "the wheel's descriptors look incomplete"
    );
    let ours = index(&ours());
    let (problems, fields) = compare(&ours, &theirs);
    assert!(
        problems.is_empty(),
        "FFI definitions differ from the pinned library:\n{}",
        problems.join("\n")
    );
    assert!(
        ours.messages.len() > 40 && fields > 100,
        "checked {} messages, {fields} fields",
        ours.messages.len()
    );
}

#[test]
fn a_moved_field_or_enum_value_is_caught() {
    let theirs = shipped();
    let mut set = ours();
    let file = set
        .file
        .iter_mut()
        .find(|f| f.name().ends_with("room.proto"))
        .expect("room.proto");
    let packet = file
        .message_type
        .iter_mut()
        .find(|m| m.name() == "DataPacketReceived")
        .expect("DataPacketReceived");
    packet
        .field
        .iter_mut()
        .find(|f| f.name() == "participant_identity")
        .expect("field")
        .number = Some(3);
    let kind = file
        .enum_type
        .iter_mut()
        .find(|e| e.name() == "DataPacketKind")
        .expect("enum");
    kind.value[1].number = Some(2);
    let (problems, _) = compare(&index(&set), &theirs);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("DataPacketKind.KIND_RELIABLE = 2"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("DataPacketReceived.participant_identity: ours is 3"),
        "{problems:?}"
    );
}
