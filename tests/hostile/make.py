# ruff: noqa: E501  (a corpus of long literal manifests)
"""Writes tests/hostile/*.yaml: manifests built to break vmid (run once; the files are kept).

    python tests/hostile/make.py

Each file's first line says what it tries. `test_hostile.py` feeds every one to `vmid
validate`, the planner and the daemon.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent

HEAD = """apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  domain:
    memory: {{guest: 64Mi}}
"""


DEV = "    devices: {}\n"


def vmi(name: str, rest: str = "", devices: str = "", volumes: str = "") -> str:
    text = HEAD.format(name=name)
    text += "    devices:\n" + devices if devices else DEV
    text += rest
    if volumes:
        text += "  volumes:\n" + volumes
    return text


def disk(name: str, source: str, bus: str = "virtio") -> tuple[str, str]:
    return (
        f"      disks:\n      - name: {name}\n        disk: {{bus: {bus}}}\n",
        f"  - name: {name}\n    {source}\n",
    )


CASES: dict[str, tuple[str, str | bytes]] = {}


def case(name: str, what: str, text: str | bytes) -> None:
    CASES[name] = (what, text)


# Path traversal, in names and in paths.
case("name-dotdot", "a name that walks up the tree", vmi("../../etc/passwd"))
case("name-slash", "a name with a slash", vmi("a/b"))
case("name-dot", "the name '.'", vmi("'.'"))
case("name-absolute", "an absolute path as the name", vmi("/etc/vmid/x"))
d, v = disk("d", "hostDisk: {path: /srv/disks/../../etc/shadow, type: Disk}")
case(
    "hostdisk-dotdot",
    "a hostDisk that walks out of its root",
    vmi("hd-dotdot", devices=d, volumes=v),
)
d, v = disk("d", "hostDisk: {path: /etc/shadow, type: Disk}")
case(
    "hostdisk-outside", "a hostDisk outside the allowed roots", vmi("hd-out", devices=d, volumes=v)
)
d, v = disk("d", "hostDisk: {path: disks/relative.img, type: DiskOrCreate, capacity: 1Gi}")
case("hostdisk-relative", "a relative hostDisk path", vmi("hd-rel", devices=d, volumes=v))
d, v = disk("d", "persistentVolumeClaim: {claimName: ../../../etc/shadow}")
case("claim-dotdot", "a claim name that walks up", vmi("claim-dotdot", devices=d, volumes=v))
d, v = disk("d", "containerDisk: {image: ../../../../etc/shadow}")
case("image-dotdot", "an image reference that is a path", vmi("image-dotdot", devices=d, volumes=v))
d, v = disk("d", "containerDisk: {image: 'quay.io/x/y:1', path: /../../etc/shadow}")
case(
    "containerdisk-path", "a containerDisk path that walks up", vmi("cd-path", devices=d, volumes=v)
)

# Option injection: commas, '=', spaces, newlines where QEMU options are built.
d, v = disk("d,file=/etc/shadow", "emptyDisk: {capacity: 1Gi}")
case("disk-name-comma", "a disk name with ,file=", vmi("inject-disk", devices=d, volumes=v))
d, v = disk("d", "emptyDisk: {capacity: 1Gi}")
case(
    "serial-comma",
    "a disk serial with ,file= in it",
    vmi(
        "inject-serial",
        devices=d.replace(
            "disk: {bus: virtio}", "disk: {bus: virtio}\n        serial: 'x,file=/etc/shadow'"
        ),
        volumes=v,
    ),
)
case(
    "mac-injection",
    "a MAC with an option after it",
    vmi(
        "inject-mac",
        devices="      interfaces:\n      - name: default\n        masquerade: {}\n        macAddress: '02:00:00:00:00:01,romfile=/etc/shadow'\n",
        rest="  networks:\n  - name: default\n    pod: {}\n",
    ),
)
case(
    "model-injection",
    "a NIC model with an option after it",
    vmi(
        "inject-model",
        devices="      interfaces:\n      - name: default\n        masquerade: {}\n        model: 'e1000,romfile=/etc/shadow'\n",
        rest="  networks:\n  - name: default\n    pod: {}\n",
    ),
)
case(
    "firmware-serial",
    "a firmware serial full of commas and equals",
    HEAD.format(name="inject-fw") + DEV + "    firmware: {serial: 'a,b=c,,d=\"e\" -f'}\n",
)
case(
    "machine-type",
    "a machine type with options",
    HEAD.format(name="inject-machine") + DEV + "    machine: {type: 'q35,accel=kvm'}\n",
)
case(
    "cpu-model",
    "a CPU model with flags injected",
    HEAD.format(name="inject-cpu") + DEV + "    cpu: {model: 'host,+vmx -S'}\n",
)
case(
    "cpu-model-comma",
    "a CPU model that sets a CPU property (QEMU's -cpu splits on every comma, even ',,')",
    HEAD.format(name="inject-cpu-model") + DEV + "    cpu: {model: 'qemu64,model-id=X'}\n",
)
case(
    "cpu-feature-comma",
    "a CPU feature name that sets the CPU vendor",
    HEAD.format(name="inject-cpu-feature")
    + DEV
    + "    cpu: {features: [{name: 'vendor=AuthenticAMD,family'}]}\n",
)
case(
    "hyperv-vendorid-comma",
    "a Hyper-V vendor id that turns on the host PMU",
    HEAD.format(name="inject-vendorid")
    + DEV
    + "    features: {hyperv: {vendorid: {enabled: true, vendorid: 'x,pmu=on'}}}\n",
)
case(
    "hostname-injection",
    "a hostname with shell and option characters",
    vmi("inject-host", rest="  hostname: 'a;rm -rf /,b=c'\n"),
)
case(
    "label-newline",
    "a label value with a newline and a QEMU option",
    vmi("inject-label").replace("metadata:\n", 'metadata:\n  labels: {x: "a\\n-device foo"}\n'),
)
case(
    "userdata-binary",
    "cloud-init user-data that is binary garbage and option text",
    vmi(
        "inject-userdata",
        devices="      disks: [{name: ci, disk: {bus: virtio}}]\n",
        volumes='  - name: ci\n    cloudInitNoCloud: {userData: "\\0\\x01,file=/etc/shadow\\n-device x"}\n',
    ),
)
case(
    "userdatabase64-bad",
    "user-data in base64 that is not base64",
    vmi(
        "bad-b64",
        devices="      disks: [{name: ci, disk: {bus: virtio}}]\n",
        volumes="  - name: ci\n    cloudInitNoCloud: {userDataBase64: '%%%not base64%%%'}\n",
    ),
)

# Size and shape.
case("huge", "a file over 256 KiB", vmi("huge") + "# " + "x" * (300 * 1024) + "\n")
case("deep", "YAML nested 200 levels deep", vmi("deep") + "  x: " + "[" * 200 + "]" * 200 + "\n")
case(
    "billion-laughs",
    "an alias bomb",
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9)
    )
    + vmi("laughs"),
)
case(
    "many-disks",
    "1000 disks",
    HEAD.format(name="many-disks")
    + "    devices:\n      disks:\n"
    + "".join(f"      - name: d{i}\n        disk: {{bus: virtio}}\n" for i in range(1000))
    + "  volumes:\n"
    + "".join(f"  - name: d{i}\n    emptyDisk: {{capacity: 1Mi}}\n" for i in range(1000)),
)
case(
    "huge-memory", "an exabyte of memory", HEAD.format(name="huge-mem").replace("64Mi", "8Ei") + DEV
)
case(
    "huge-number",
    "an integer with 5000 digits",
    vmi("huge-number", rest="  terminationGracePeriodSeconds: " + "9" * 5000 + "\n"),
)
case(
    "negative-grace",
    "a negative grace period",
    vmi("neg-grace", rest="  terminationGracePeriodSeconds: -5\n"),
)
case(
    "huge-cpu",
    "a million vCPUs",
    HEAD.format(name="huge-cpu") + DEV + "    cpu: {cores: 1000000}\n",
)
case("binary", "binary bytes", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
case("nul-in-text", "a NUL byte inside the YAML", vmi("nul").replace("64Mi", "64\0Mi").encode())
case(
    "control-chars",
    "control characters in a string",
    vmi("ctrl", rest='  hostname: "a\\x1b[2Jb"\n'),
)
case("utf16", "UTF-16 text", vmi("utf16").encode("utf-16"))
case("bom-latin1", "Latin-1 bytes that are not UTF-8", vmi("latin").encode() + b"# caf\xe9\n")
case("tabs", "tabs for indentation", vmi("tabs").replace("  name:", "\tname:"))
case("empty", "an empty file", "")
case("only-comment", "nothing but a comment", "# nothing here\n")
case("list-not-map", "a list at the top", "- a\n- b\n")
case("scalar", "a scalar at the top", "just text\n")
case("multi-doc", "two documents, one of them hostile", vmi("first") + "---\n" + vmi("../second"))

# Wrong types everywhere.
case(
    "memory-list",
    "memory as a list",
    HEAD.format(name="type-mem").replace("{guest: 64Mi}", "[64Mi]") + DEV,
)
case("disks-map", "disks as a map", vmi("type-disks", devices="      disks: {a: b}\n"))
case(
    "grace-string",
    "grace as a string",
    vmi("type-grace", rest="  terminationGracePeriodSeconds: 'thirty'\n"),
)
case("name-number", "the name as a number", vmi("12345").replace("name: 12345", "name: 12345"))
case("name-bool", "the name as a boolean", vmi("yes").replace("name: yes", "name: true"))
case(
    "spec-null",
    "spec: null",
    "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: nul}\nspec: null\n",
)
case("kind-wrong", "another kind", vmi("kind").replace("VirtualMachineInstance", "Pod"))
case("apiversion-wrong", "another API version", vmi("apiv").replace("kubevirt.io/v1", "v1"))
case(
    "duplicate-keys", "a key twice", vmi("dup").replace("  domain:\n", "  domain: {}\n  domain:\n")
)
case(
    "yaml-tags",
    "a python object tag",
    vmi("tags").replace("{guest: 64Mi}", "!!python/object/apply:os.system ['id']"),
)
case("unknown-field", "a field KubeVirt does not have", vmi("unknown", rest="  privileged: true\n"))
case(
    "long-name-253",
    "a name of 253 characters (valid: sockets must still work)",
    vmi(".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])),
)
case(
    "long-name-254",
    "a name of 254 characters",
    vmi(".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62])),
)
case("upper-name", "a name with capitals and unicode", vmi("Ünïcode-VM"))


def main() -> None:
    for old in HERE.glob("*.yaml"):
        old.unlink()
    for name, (what, text) in CASES.items():
        data = text.encode() if isinstance(text, str) else text
        if isinstance(text, str) and name not in ("binary", "utf16", "empty"):
            data = f"# hostile: {what}\n".encode() + data
        (HERE / f"{name}.yaml").write_bytes(data)
    print(f"{len(CASES)} files")


if __name__ == "__main__":
    main()
