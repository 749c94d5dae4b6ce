//! The Kubernetes snippet of the README's "Deploying" section is valid YAML and agrees with the
//! code: `/readyz` as the readiness probe, `/healthz` as liveness, on the port the container
//! serves, and a grace period that covers `preStop` plus the drain (DRAIN_TIMEOUT_SECS and
//! DRAIN_HTTP_GRACE_SECS, as set in the snippet or by default).

use yaml_rust2::{Yaml, YamlLoader};

/// The first ```yaml block after the "## Deploying" heading.
fn deploying_yaml() -> String {
    let readme = include_str!("../README.md");
    let section = readme
        .split_once("\n## Deploying\n")
        .expect("a Deploying section")
        .1;
    let block = section.split_once("```yaml\n").expect("a yaml block").1;
    block
        .split_once("\n```")
        .expect("closed block")
        .0
        .to_owned()
}

/// The default of `serve`'s flag `--name` (clap), as a number.
fn default_secs(name: &str) -> f64 {
    use clap::CommandFactory;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: callbridge::config::ServeArgs,
    }
    let command = Cli::command();
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(name))
        .unwrap_or_else(|| panic!("no --{name}"));
    arg.get_default_values()[0]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_kubernetes_snippet_parses_and_fits_the_drain() {
    let docs = YamlLoader::load_from_str(&deploying_yaml()).expect("valid YAML");
    let d = &docs[0];
    assert_eq!(d["kind"].as_str(), Some("Deployment"));
    assert_eq!(
        d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"].as_i64(),
        Some(0)
    );
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["args"][0].as_str(), Some("serve"));
    let port = &c["ports"][0];
    assert_eq!(port["containerPort"].as_i64(), Some(8080), "PORT's default");
    let port_name = port["name"].as_str().unwrap();
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            c[probe]["httpGet"]["port"].as_str(),
            Some(port_name),
            "{probe}"
        );
    }
    // The drain settings the pod runs with: its env, else the defaults.
    let env = |name: &str| -> f64 {
        c["env"]
            .as_vec()
            .and_then(|list| list.iter().find(|e| e["name"].as_str() == Some(name)))
            .map(|e| e["value"].as_str().unwrap().parse().unwrap())
            .unwrap_or_else(|| default_secs(&name.to_lowercase().replace('_', "-")))
    };
    let timeout = env("DRAIN_TIMEOUT_SECS");
    let grace = env("DRAIN_HTTP_GRACE_SECS");
    assert_eq!(
        timeout,
        default_secs("drain-timeout-secs"),
        "the snippet shows the default"
    );
    let pre_stop = match &c["lifecycle"]["preStop"]["sleep"]["seconds"] {
        Yaml::Integer(s) => *s as f64,
        other => panic!("preStop sleep: {other:?}"),
    };
    let period = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("a grace period") as f64;
    // The calls' own close (2 s) and the connections' (2 s) need room too.
    assert!(
        period >= pre_stop + timeout + grace + 4.0,
        "terminationGracePeriodSeconds {period} < preStop {pre_stop} + {timeout} + {grace} + closing"
    );
}
