//! The setup page: a form for an address, then the exact settings for each common client, the
//! Apple profile download and a QR code of its URL. Plain HTML and CSS, no external assets,
//! no scripts; readable on a phone.

use std::fmt::Write;

use qrcode::QrCode;
use qrcode::render::svg;

use crate::ClientPorts;
use crate::xml::escape;

/// What the page shows below the form.
pub(crate) enum Outcome<'a> {
    /// No address typed yet.
    Empty,
    /// The address could not be used; the reason is shown.
    Refused { typed: &'a str, reason: &'a str },
    /// Settings for this (validated) address.
    Settings {
        address: &'a str,
        host: &'a str,
        ports: &'a ClientPorts,
        /// Absolute https URL of the signed Apple profile.
        profile_url: &'a str,
    },
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
margin:0 auto;max-width:46rem;padding:1rem;line-height:1.45;color:#1d1d1f;background:#fafafa}\
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:1.6rem;border-bottom:1px solid #ddd}\
form{display:flex;gap:.5rem;flex-wrap:wrap}input{flex:1 1 16rem;font-size:1rem;padding:.5rem}\
button,.button{font-size:1rem;padding:.5rem 1rem;background:#0b57d0;color:#fff;border:0;\
border-radius:.3rem;text-decoration:none;display:inline-block}\
table{border-collapse:collapse;width:100%;margin:.5rem 0}td,th{border:1px solid #ddd;\
padding:.35rem .4rem;text-align:left;vertical-align:top}th{background:#eee}\
code{background:#eee;padding:0 .2rem;border-radius:.2rem;overflow-wrap:anywhere}\
td code{overflow-wrap:normal;white-space:nowrap}.scroll{overflow-x:auto}\
.qr svg{width:12rem;height:12rem}.error{color:#b00020}\
section{background:#fff;padding:.2rem 1rem 1rem;margin:1rem 0;border-radius:.4rem;\
box-shadow:0 1px 2px rgba(0,0,0,.1)}";

/// The whole page.
pub(crate) fn page(outcome: &Outcome<'_>) -> String {
    let typed = match outcome {
        Outcome::Empty => "",
        Outcome::Refused { typed, .. } => typed,
        Outcome::Settings { address, .. } => address,
    };
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Set up your mail</title><style>{STYLE}</style></head><body>\n\
         <h1>Set up your mail</h1>\n<form method=\"get\" action=\"/setup\">\
         <input type=\"email\" name=\"address\" placeholder=\"you@example.org\" required \
         autocomplete=\"email\" value=\"{}\"><button type=\"submit\">Show settings</button></form>\n",
        escape(typed)
    );
    match outcome {
        Outcome::Empty => out.push_str(
            "<p>Type your email address to see the settings for your mail program.</p>\n",
        ),
        Outcome::Refused { reason, .. } => {
            let _ = writeln!(out, "<p class=\"error\">{}</p>", escape(reason));
        }
        Outcome::Settings {
            address,
            host,
            ports,
            profile_url,
        } => settings(&mut out, address, host, ports, profile_url),
    }
    out.push_str("</body></html>\n");
    out
}

/// One row of the settings table: (what, protocol, port, security).
fn rows(ports: &ClientPorts) -> Vec<(&'static str, &'static str, u16, &'static str)> {
    [
        ("Receive", "IMAP", ports.imaps, "SSL/TLS"),
        ("Receive", "IMAP", ports.imap, "STARTTLS"),
        ("Receive", "POP3", ports.pop3s, "SSL/TLS"),
        ("Receive", "POP3", ports.pop3, "STARTTLS"),
        ("Send", "SMTP", ports.submissions, "SSL/TLS"),
        ("Send", "SMTP", ports.submission, "STARTTLS"),
    ]
    .into_iter()
    .filter(|row| row.2 != 0)
    .collect()
}

fn qr_svg(url: &str) -> String {
    match QrCode::new(url.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<svg::Color<'_>>()
                .min_dimensions(200, 200)
                .quiet_zone(true)
                .build();
            // Inline in HTML: drop the XML declaration the renderer puts first.
            match svg.find("<svg") {
                Some(start) => svg[start..].to_owned(),
                None => String::new(),
            }
        }
        Err(err) => {
            tracing::warn!(%err, "cannot make a QR code of the profile URL");
            String::new()
        }
    }
}

fn settings(out: &mut String, address: &str, host: &str, ports: &ClientPorts, profile_url: &str) {
    let (a, h, url) = (escape(address), escape(host), escape(profile_url));
    let p = ports;
    let _ = write!(
        out,
        "<section id=\"settings\"><h2>Your settings</h2>\
         <p>User name: <code>{a}</code> (your full address) &middot; Password: your mail password \
         &middot; Server: <code>{h}</code> for everything &middot; Authentication: normal password.</p>\n\
         <div class=\"scroll\"><table><tr><th>Use</th><th>Protocol</th><th>Port</th><th>Security</th></tr>\n"
    );
    for (dir, proto, port, sec) in rows(ports) {
        let _ = writeln!(
            out,
            "<tr><td>{dir}</td><td>{proto}</td><td>{port}</td><td>{sec}</td></tr>"
        );
    }
    out.push_str("</table></div><p>Prefer IMAP (keeps mail on the server) and SSL/TLS. Never choose &ldquo;None&rdquo; as security.</p></section>\n");

    let _ = writeln!(
        out,
        "<section id=\"apple\"><h2>iPhone, iPad and Mac (Apple Mail)</h2>\
         <p><a class=\"button\" href=\"{url}\">Download the profile</a></p>\
         <p>Open this page in Safari on the device, or scan the code with the camera. Then open \
         <em>Settings &rarr; Profile Downloaded</em> (on a Mac: <em>System Settings &rarr; Privacy \
         &amp; Security &rarr; Profiles</em>), choose <em>Install</em> and type your password when asked.</p>\
         <div class=\"qr\">{}</div>\
         <p>POP3 instead of IMAP: <a href=\"{url}?protocol=pop3\">POP3 profile</a>.</p></section>",
        qr_svg(profile_url)
    );
    let _ = write!(
        out,
        "<section id=\"thunderbird\"><h2>Thunderbird (Windows, Mac, Linux)</h2>\
         <p>Choose <em>Account Settings &rarr; Account Actions &rarr; Add Mail Account</em>, type your name, \
         <code>{a}</code> and your password, and choose <em>Continue</em>: the settings are found \
         automatically. Keep <em>IMAP</em> selected and choose <em>Done</em>.</p></section>\n\
         <section id=\"android\"><h2>Thunderbird for Android and K-9 Mail</h2>\
         <p>Add an account, type <code>{a}</code>, then your password: the settings are found \
         automatically (IMAP <code>{h}</code> port {imaps} SSL/TLS, SMTP port {subs} SSL/TLS).</p></section>\n\
         <section id=\"outlook\"><h2>Outlook</h2>\
         <p>Outlook for Windows (classic): <em>File &rarr; Add Account</em>, type <code>{a}</code>; \
         Outlook finds the settings itself. If it asks for the account type, choose <em>IMAP</em> and \
         enter: incoming <code>{h}</code> port {imaps} encryption <em>SSL/TLS</em>; outgoing \
         <code>{h}</code> port {subs} encryption <em>SSL/TLS</em>; leave <em>Secure Password \
         Authentication (SPA)</em> off.</p><p>New Outlook and Outlook for iPhone/Android: \
         <em>Add account</em>, type <code>{a}</code>, choose <em>IMAP</em> if asked, and enter the \
         same settings.</p></section>\n\
         <section id=\"gmail\"><h2>Gmail app (Android, iPhone)</h2>\
         <p><em>Add another account &rarr; Other</em>, type <code>{a}</code>, choose \
         <em>Personal (IMAP)</em>, type your password. Incoming server: <code>{h}</code>, port {imaps}, \
         security SSL/TLS, user name <code>{a}</code>. Outgoing server: <code>{h}</code>, port {subs}, \
         security SSL/TLS, <em>Require sign-in</em> on, user name <code>{a}</code>.</p></section>\n\
         <section id=\"windows-mail\"><h2>Windows Mail</h2>\
         <p><em>Add account &rarr; Advanced setup &rarr; Internet email</em>. Account type \
         <em>IMAP4</em>; incoming server <code>{h}:{imaps}</code>; outgoing (SMTP) server \
         <code>{h}:{subs}</code>; user name <code>{a}</code>; tick <em>Outgoing server requires \
         authentication</em>, <em>Use the same user name and password</em>, <em>Require SSL for \
         incoming email</em> and <em>Require SSL for outgoing email</em>.</p></section>\n\
         <section id=\"claws\"><h2>Claws Mail</h2>\
         <p><em>Configuration &rarr; Create new account</em>. Basic: protocol <em>IMAP</em>, server \
         for receiving <code>{h}</code>, SMTP server <code>{h}</code>, user ID <code>{a}</code>. \
         Receive: authentication method <em>Automatic</em>. Send: tick <em>SMTP Authentication</em> \
         (method <em>Automatic</em>, same user ID). SSL/TLS: <em>Use SSL/TLS</em> for IMAP and for \
         SMTP. Advanced: IMAP port {imaps}, SMTP port {subs}.</p></section>\n\
         <section id=\"thebat\"><h2>The Bat!</h2>\
         <p><em>Account &rarr; New</em>, type your name, <code>{a}</code> and your password, protocol \
         <em>IMAP</em>. Incoming server <code>{h}</code> port {imaps}, connection <em>Secure to \
         dedicated port (TLS)</em>; outgoing server <code>{h}</code> port {subs}, connection \
         <em>Secure to dedicated port (TLS)</em>, tick <em>My SMTP server requires \
         authentication</em>.</p></section>\n\
         <section id=\"other\"><h2>Any other program</h2>\
         <p>Use the table at the top: server <code>{h}</code>, user name <code>{a}</code>, your \
         password, IMAP port {imaps} with SSL/TLS (or {imap} with STARTTLS), SMTP port {subs} with \
         SSL/TLS (or {sub} with STARTTLS), authentication <em>normal password</em>.</p></section>\n",
        imaps = p.imaps,
        imap = p.imap,
        subs = p.submissions,
        sub = p.submission,
    );
}
