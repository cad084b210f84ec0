#!/usr/bin/python3
"""Independent reader for a TensorBoard event file: checks every TFRecord CRC-32C (computed here,
bit by bit) and decodes the records with python3-protobuf against tensorflow.Event's field numbers
(tensorflow/core/util/event.proto, summary.proto). Prints one JSON object per record."""
import json, struct, sys

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF

def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

def event_class():
    f = descriptor_pb2.FileDescriptorProto(name="tb_event.proto", package="tensorflow", syntax="proto3")
    T = descriptor_pb2.FieldDescriptorProto
    value = descriptor_pb2.DescriptorProto(name="Value")
    value.field.add(name="tag", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=T.TYPE_FLOAT, label=T.LABEL_OPTIONAL)
    summary = f.message_type.add(name="Summary")
    summary.nested_type.add().CopyFrom(value)
    summary.field.add(name="value", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                      type_name=".tensorflow.Summary.Value")
    event = f.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=T.TYPE_DOUBLE, label=T.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                    type_name=".tensorflow.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    desc = pool.FindMessageTypeByName("tensorflow.Event")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)

Event = event_class()
data = open(sys.argv[1], "rb").read()
pos = 0
while pos < len(data):
    header = data[pos:pos + 8]
    (n,) = struct.unpack("<Q", header)
    (hcrc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    assert hcrc == masked(header), "bad length CRC at byte %d" % pos
    body = data[pos + 12:pos + 12 + n]
    (bcrc,) = struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])
    assert len(body) == n and bcrc == masked(body), "bad data CRC at byte %d" % pos
    pos += 16 + n
    e = Event()
    e.ParseFromString(body)
    rec = {"wall_time": e.wall_time, "step": e.step}
    if e.file_version:
        rec["file_version"] = e.file_version
    for v in e.summary.value:
        rec["tag"], rec["value"] = v.tag, v.simple_value
    print(json.dumps(rec))
