"""What the person wrote (reply_text): one table row per pattern, each with the exact
text the entry must keep. Rows come from our own messages and from the fixtures of
email_reply_parser's, talon's and mail-parser-reply's test suites (rewritten as rows).

The score over the table (exact / kept too much / cut written text) is printed by
`test_the_score_over_the_table`; every row must be exact, and a cut is the worst miss.
"""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from maildesk.parse import parse_message
from maildesk.reply_text import is_forward_subject, written_text

# (id, body, the writer's text)
PLAIN: list[tuple[str, str, str]] = [
    # --- nothing to trim
    ("plain", "Hello,\nthe printer is on fire.\n", "Hello,\nthe printer is on fire."),
    ("list-is-no-signature", "Steps:\n- open the app\n- tap save\nIt crashes.",
     "Steps:\n- open the app\n- tap save\nIt crashes."),
    ("only-a-quote-is-kept", "> only a quote", "> only a quote"),
    ("sign-off", "It works.\n\nThanks,\nCarol\n", "It works.\n\nThanks,\nCarol"),
    ("sign-off-one-line", "Fixed now, thank you!\n\nThanks, Ana",
     "Fixed now, thank you!\n\nThanks, Ana"),
    ("thanks-sentence", "Thanks, that fixed it. But now the scanner fails.\nError 42.",
     "Thanks, that fixed it. But now the scanner fails.\nError 42."),
    ("wrote-in-a-sentence", "As I wrote:\nthe invoice is wrong.\nPlease fix it.",
     "As I wrote:\nthe invoice is wrong.\nPlease fix it."),
    ("sent-from-in-a-sentence", "Here is another email\n\nInviato da desk, is much easier "
     "then my mobile phone.\n", "Here is another email\n\nInviato da desk, is much easier "
     "then my mobile phone."),
    ("from-line-in-text", "From: the shop I bought it in.\nIt broke after a day.",
     "From: the shop I bought it in.\nIt broke after a day."),
    # --- attributions, many languages
    ("en-gmail", "Thanks!\n\nOn Mon, 3 Jun 2024 at 10:00, Bob <bob@example.com> wrote:\n> hi\n",
     "Thanks!"),
    ("en-apple", "Sure.\n\nOn Jun 3, 2024, at 10:00 AM, Bob Smith <bob@example.com> wrote:\n\n"
     "> Can you call me?\n", "Sure."),
    ("en-wrapped", "I get it now.\n\nOn Mon, Jun 3, 2024 at 10:00 AM Bob Smith <\n"
     "bob@example.com> wrote:\n\n> hi\n", "I get it now."),
    ("en-thunderbird", "Works.\n\nBob Smith wrote:\n> Does it work?\n", "Works."),
    ("talon-quoted-attribution", "Hello\n> On 22 Aug 2015, at 19:21, Adam Renberg "
     "<tgwizard@gmail.com> wrote:\n>\n> Hi there!\n", "Hello"),
    ("sentence-is-no-wrapped-attribution", "A question about order 42\nJohn wrote:\n> x\n",
     "A question about order 42"),
    ("en-no-quote-marks", "Yes.\n\nOn Nov 26, 2012, at 10:27 AM, \"Watson, Dan\" "
     "<user@host2.com> wrote:\nThis is a message.\nWith a second line.\n", "Yes."),
    ("en-talon-dashes", "Reply\n\nOn 04/19/2011 07:10 AM, Roman Tkachenko wrote:\n\n"
     "> Test.\n>\n> Roman", "Reply"),
    ("de", "Danke, passt.\n\nAm 03.06.2024 um 10:00 schrieb Bob <bob@example.com>:\n> hallo\n",
     "Danke, passt."),
    ("de-gmail", "Ja.\n\nAm Mo., 3. Juni 2024 um 10:00 Uhr schrieb Bob Smith <bob@example.com>:"
     "\n\n> Geht es?\n", "Ja."),
    ("de-no-address", "Erledigt.\n\nAm 03.06.2024 um 10:00 schrieb Bob Smith:\n> Bitte\n",
     "Erledigt."),
    ("fr", "Merci\n\nLe 3 juin 2024, Bob a écrit :\n> salut\n", "Merci"),
    ("fr-gmail", "D'accord.\n\nLe lun. 3 juin 2024 à 10:00, Bob <bob@example.com> a écrit :\n"
     "\n> Bonjour\n", "D'accord."),
    ("es", "Gracias.\n\nEl lun, 3 jun 2024 a las 10:00, Bob (<bob@example.com>) escribió:\n"
     "> hola\n", "Gracias."),
    ("it", "Grazie.\n\nIl giorno lun 3 giu 2024 alle ore 10:00 Bob <bob@example.com> ha "
     "scritto:\n> ciao\n", "Grazie."),
    ("pt", "Obrigado.\n\nEm seg., 3 de jun. de 2024 às 10:00, Bob <bob@example.com> "
     "escreveu:\n> olá\n", "Obrigado."),
    ("nl", "Dank je.\n\nOp ma 3 jun. 2024 om 10:00 schreef Bob <bob@example.com>:\n> hoi\n",
     "Dank je."),
    ("nl-forum", "Prima.\n\nOp 3 juni 2024 heeft Bob het volgende geschreven:\n> vraag\n",
     "Prima."),
    ("sv", "Tack.\n\nDen mån 3 juni 2024 kl 10:00 skrev Bob <bob@example.com>:\n> hej\n",
     "Tack."),
    ("da", "Tak.\n\nDen man. 3. jun. 2024 kl. 10.00 skrev Bob <bob@example.com>:\n> hej\n",
     "Tak."),
    ("pl", "Dzięki.\n\nW dniu pon., 3.06.2024 o 10:00 Bob <bob@example.com> napisał(a):\n"
     "> cześć\n", "Dzięki."),
    ("ru-gmail", "Спасибо.\n\nпн, 3 июн. 2024 г. в 10:00, Bob <bob@example.com>:\n> привет\n",
     "Спасибо."),
    ("ru", "Спасибо.\n\n03.06.2024 10:00, Bob пишет:\n> привет\n", "Спасибо."),
    ("ja-gmail", "ありがとうございます。\n\n2024年6月3日(月) 10:00 Bob <bob@example.com>:\n"
     "> こんにちは\n", "ありがとうございます。"),
    ("zh-gmail", "谢谢。\n\nBob <bob@example.com> 于2024年6月3日周一 10:00写道：\n> 你好\n",
     "谢谢。"),
    ("tr", "Teşekkürler.\n\nBob <bob@example.com>, 3 Haz 2024 Pzt, 10:00 tarihinde şunu "
     "yazdı:\n> merhaba\n", "Teşekkürler."),
    ("fi", "Kiitos.\n\nma 3.6.2024 klo 10.00 Bob (bob@example.com) kirjoitti:\n> hei\n",
     "Kiitos."),
    ("cs", "Díky.\n\npo 3. 6. 2024 v 10:00 odesílatel Bob <bob@example.com> napsal:\n> ahoj\n",
     "Díky."),
    ("hu", "Köszi.\n\nBob <bob@example.com> ezt írta (időpont: 2024. jún. 3., H, 10:00):\n"
     "> szia\n", "Köszi."),
    ("ko", "감사합니다.\n\n2024년 6월 3일 (월) 오전 10:00, Bob <bob@example.com>님이 작성:\n"
     "> 안녕\n", "감사합니다."),
    # --- Outlook and "Original Message"
    ("original-message", "ok\n\n-----Original Message-----\nFrom: Bob\nSent: Monday\nTo: desk\n"
     "Subject: x\n\nold", "ok"),
    ("original-message-de", "ok\n\n-----Ursprüngliche Nachricht-----\nVon: Bob\nGesendet: Montag"
     "\nAn: desk\nBetreff: x\n\nalt", "ok"),
    ("original-message-outlook-express", "Done.\n\n----- Original Message -----\nFrom: Bob\n"
     "To: desk\nSent: Monday, June 03, 2024 10:00 AM\nSubject: x\n\nold", "Done."),
    ("outlook-block", "And another reply!\n\nFrom: Dan Watson [mailto:user@host.com]\n"
     "Sent: Monday, November 26, 2012 10:48 AM\nTo: Watson, Dan\nSubject: Re: New Issue\n\n"
     "A reply\n\n--\nSent from my iPhone\n", "And another reply!"),
    ("outlook-underscores", "See below.\n\n________________________________\nFrom: Bob Smith "
     "<bob@example.com>\nSent: Monday, June 3, 2024 10:00 AM\nTo: Support\nSubject: Help\n\n"
     "old text", "See below."),
    ("outlook-bold", "Yes please.\n\n*From:* Bob <bob@example.com>\n*Sent:* Monday\n*To:* desk\n"
     "*Subject:* x\n\nold", "Yes please."),
    ("outlook-de", "Passt.\n\nVon: Bob <bob@example.com>\nGesendet: Montag, 3. Juni 2024 10:00\n"
     "An: Support\nBetreff: Hilfe\n\nalt", "Passt."),
    ("outlook-fr", "Parfait.\n\nDe : Bob <bob@example.com>\nEnvoyé : lundi 3 juin 2024 10:00\n"
     "À : Support\nObjet : Aide\n\nancien", "Parfait."),
    ("outlook-es", "Listo.\n\nDe: Bob <bob@example.com>\nEnviado el: lunes, 3 de junio de "
     "2024 10:00\nPara: Soporte\nAsunto: Ayuda\n\nviejo", "Listo."),
    ("outlook-nl", "Klopt.\n\nVan: Bob\nVerzonden: maandag\nAan: desk\nOnderwerp: x\n\noud",
     "Klopt."),
    ("outlook-it", "Ok.\n\nDa: Bob <bob@example.com>\nInviato: lunedì 3 giugno 2024 10:00\n"
     "A: Supporto\nOggetto: Aiuto\n\nvecchio", "Ok."),
    ("outlook-pt", "Certo.\n\nDe: Bob <bob@example.com>\nEnviado: segunda-feira, 3 de junho "
     "de 2024 10:00\nPara: Suporte\nAssunto: Ajuda\n\nantigo", "Certo."),
    # --- quotes without attribution, inline replies
    ("trailing-quote", "Still burning.\n\n> the printer\n>> is on fire\n", "Still burning."),
    ("inline", "> Which model?\nA P-200.\n> Since when?\nToday.\n",
     "> Which model?\nA P-200.\n> Since when?\nToday."),
    ("inline-with-attribution", "On Mon, 3 Jun 2024, Bob <bob@example.com> wrote:\n"
     "> Which model?\nA P-200.\n\n> Since when?\nToday.\n\n> Anything else?\n> Bye\n",
     "> Which model?\nA P-200.\n\n> Since when?\nToday."),
    ("inline-answers-then-sig", "Hi,\n\n> Which model?\nA P-200.\n\n-- \nAna\nACME",
     "Hi,\n\n> Which model?\nA P-200."),
    ("inline-under-attribution-top", "See my answers.\n\nOn 9 Jan 2014, at 2:47, George "
     "wrote:\n\n> Is port 22 open?\nYes.\n> And 80?\nNo.\n",
     "See my answers.\n\n> Is port 22 open?\nYes.\n> And 80?\nNo."),
    ("quote-then-signature", "Agreed.\n\n> old text\n\n-- \nBob\n", "Agreed."),
    ("android-inline-wrapped", "This is a test\n\nOn Sep 21, 2016 3:18 PM, \"frugal\" "
     "<noreply@frugal.com> wrote:\n>\n>\n> Hi Mert,\n> Here are your unread message(s)\n",
     "This is a test"),
    ("partial-quote-header", "On your remote host you can run:\n\n     telnet 127.0.0.1 52698\n"
     "\nThis should connect.\n\nOn 9 Jan 2014, at 2:47, George Plymale wrote:\n\n> I am "
     "having an odd issue\n> […]\n", "On your remote host you can run:\n\n     telnet "
     "127.0.0.1 52698\n\nThis should connect."),
    # --- signatures
    ("dash-signature", "Please call me.\n\n-- \nBob Smith\nACME Inc.\n+1 555 0100",
     "Please call me."),
    ("dash-signature-no-space", "Please call me.\n--\nBob", "Please call me."),
    ("iphone", "Yes.\n\nSent from my iPhone", "Yes."),
    ("iphone-de", "Ja.\n\nVon meinem iPhone gesendet", "Ja."),
    ("iphone-es", "Sí.\n\nEnviado desde mi iPhone", "Sí."),
    ("iphone-fr", "Oui.\n\nEnvoyé de mon iPhone", "Oui."),
    ("iphone-it", "Sì.\n\nInviato da iPhone", "Sì."),
    ("iphone-pt", "Sim.\n\nEnviado do meu iPhone", "Sim."),
    ("iphone-nl", "Ja.\n\nVerzonden vanaf mijn iPhone", "Ja."),
    ("iphone-sv", "Ja.\n\nSkickat från min iPhone", "Ja."),
    ("iphone-pl", "Tak.\n\nWysłane z iPhone'a", "Tak."),
    ("iphone-tr", "Evet.\n\niPhone'umdan gönderildi", "Evet."),
    ("outlook-mobile", "On my way.\n\nGet Outlook for iOS<https://aka.ms/o0ukef>", "On my way."),
    ("blackberry", "Noted.\n\nSent from my BlackBerry® wireless device", "Noted."),
    ("mobile-then-quote", "Fine.\n\nSent from my iPhone\n\nOn Jun 3, 2024, at 10:00, Bob "
     "<bob@example.com> wrote:\n\n> ok?\n", "Fine."),
    # --- forwards keep the forwarded part
    ("forward-gmail", "Can you look at this?\n\n---------- Forwarded message ---------\n"
     "From: Shop <shop@example.com>\nDate: Mon, Jun 3, 2024\nSubject: Order\nTo: me\n\n"
     "Your order shipped.", "Can you look at this?\n\n---------- Forwarded message "
     "---------\nFrom: Shop <shop@example.com>\nDate: Mon, Jun 3, 2024\nSubject: Order\n"
     "To: me\n\nYour order shipped."),
    ("forward-apple", "See below.\n\nBegin forwarded message:\n\nFrom: Shop <shop@example.com>"
     "\nSubject: Order\n\nShipped.", "See below.\n\nBegin forwarded message:\n\nFrom: Shop "
     "<shop@example.com>\nSubject: Order\n\nShipped."),
    ("forward-de", "Bitte prüfen.\n\nAnfang der weitergeleiteten Nachricht:\n\nVon: Shop\n"
     "Betreff: Bestellung\n\nVersandt.", "Bitte prüfen.\n\nAnfang der weitergeleiteten "
     "Nachricht:\n\nVon: Shop\nBetreff: Bestellung\n\nVersandt."),
    ("forward-thunderbird", "FYI\n\n-------- Forwarded Message --------\nSubject: Order\n"
     "Date: Mon, 3 Jun 2024\nFrom: Shop\n\nShipped.", "FYI\n\n-------- Forwarded Message "
     "--------\nSubject: Order\nDate: Mon, 3 Jun 2024\nFrom: Shop\n\nShipped."),
    ("forward-es", "Mira esto.\n\n---------- Mensaje reenviado ---------\nDe: Tienda\n\nEnviado.",
     "Mira esto.\n\n---------- Mensaje reenviado ---------\nDe: Tienda\n\nEnviado."),
]

# (id, subject, body, the writer's text): the subject says it is a forward
FORWARDS: list[tuple[str, str, str, str]] = [
    ("outlook-forward", "FW: Order 42", "Please handle.\n\n________________________________\n"
     "From: Shop\nSent: Monday\nTo: me\nSubject: Order 42\n\nShipped.",
     "Please handle.\n\n________________________________\nFrom: Shop\nSent: Monday\nTo: me\n"
     "Subject: Order 42\n\nShipped."),
    ("outlook-forward-de", "WG: Bestellung", "Bitte.\n\nVon: Shop\nGesendet: Montag\nAn: ich\n"
     "Betreff: Bestellung\n\nVersandt.", "Bitte.\n\nVon: Shop\nGesendet: Montag\nAn: ich\n"
     "Betreff: Bestellung\n\nVersandt."),
    ("forward-es-rv", "RV: Pedido", "Mira.\n\nDe: Tienda\nEnviado: lunes\nPara: yo\n"
     "Asunto: Pedido\n\nEnviado.", "Mira.\n\nDe: Tienda\nEnviado: lunes\nPara: yo\n"
     "Asunto: Pedido\n\nEnviado."),
]

GMAIL_HTML = ('<div dir="ltr">Thanks, it works now.<div><br></div><div>Ana</div></div><br>'
              '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Jun 3, 2024 '
              'at 10:00 AM Bob &lt;<a href="mailto:bob@example.com">bob@example.com</a>&gt; '
              'wrote:<br></div><blockquote class="gmail_quote" style="margin:0px">Does it work?'
              '</blockquote></div>')
OUTLOOK_HTML = ('<html><body><div class="WordSection1"><p class="MsoNormal">Yes, please go '
                'ahead.</p><p class="MsoNormal">Regards,<br>Bob</p><div><div style="border:none;'
                'border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0in 0in 0in"><p class="MsoNormal">'
                '<b>From:</b> Support &lt;support@example.com&gt;<br><b>Sent:</b> Monday<br>'
                '<b>To:</b> Bob<br><b>Subject:</b> Quote</p></div></div><p>Old text</p></div>'
                '</body></html>')
OUTLOOK_NEW_HTML = ('<div>Confirmed.</div><div id="appendonsend"></div><hr><div id="divRplyFwdMsg">'
                    '<b>From:</b> Support<br><b>Sent:</b> Monday</div><div>Old text</div>')
APPLE_HTML = ('<html><body><div>Sounds good, see you then.</div><div><br><div><blockquote '
              'type="cite"><div>On Jun 3, 2024, at 10:00 AM, Bob &lt;bob@example.com&gt; '
              'wrote:</div><br><div><div>Tomorrow at 10?</div></div></blockquote></div><br></div>'
              '</body></html>')
APPLE_ORIGINAL_HTML = ('<div>Got it.</div><div><br><div id="AppleOriginalContents">On Jun 3, Bob '
                       'wrote:<div>old</div></div></div>')
APPLE_INLINE_HTML = ('<div>Answers below.</div><blockquote type="cite"><div>Which model?</div>'
                     '</blockquote><div>A P-200.</div><blockquote type="cite"><div>Since when?'
                     '</div></blockquote><div>Since today.</div>')
THUNDERBIRD_HTML = ('<p>Done, thanks.</p><div class="moz-cite-prefix">On 03.06.24 10:00, Bob '
                    'wrote:<br></div><blockquote type="cite" cite="mid:x@y">old</blockquote>')
YAHOO_HTML = ('<div>OK for me.</div><div class="yahoo_quoted"><div>On Monday, Bob wrote:</div>'
              '<div>old</div></div>')
GMAIL_FORWARD_HTML = ('<div dir="ltr">Please check.<br><br><div class="gmail_quote"><div '
                      'dir="ltr" class="gmail_attr">---------- Forwarded message ---------<br>'
                      'From: Shop<br></div><div>Your order shipped.</div></div></div>')
GMAIL_SIGNATURE_HTML = ('<div>Call me back please.</div><div><br></div>-- <br><div '
                        'class="gmail_signature">Bob Smith<br>ACME</div>')
HOTMAIL_HTML = ('<div>Fine by me.</div><hr id="stopSpelling">From: Bob<br>Sent: Monday<br>'
                'old')

# (id, subject, html, the writer's text)
HTML: list[tuple[str, str, str, str]] = [
    ("gmail", "Re: it", GMAIL_HTML, "Thanks, it works now.\n\nAna"),
    ("outlook", "RE: Quote", OUTLOOK_HTML, "Yes, please go ahead.\n\nRegards,\nBob"),
    ("outlook-new", "RE: x", OUTLOOK_NEW_HTML, "Confirmed."),
    ("apple", "Re: meeting", APPLE_HTML, "Sounds good, see you then."),
    ("apple-original-contents", "Re: x", APPLE_ORIGINAL_HTML, "Got it."),
    ("apple-inline", "Re: printer", APPLE_INLINE_HTML,  # the quoted questions stay
     "Answers below.\n\nWhich model?\n\nA P-200.\n\nSince when?\n\nSince today."),
    ("thunderbird", "Re: x", THUNDERBIRD_HTML, "Done, thanks."),
    ("yahoo", "Re: x", YAHOO_HTML, "OK for me."),
    ("gmail-forward", "Fwd: Order", GMAIL_FORWARD_HTML,
     "Please check.\n\n---------- Forwarded message ---------\nFrom: Shop\nYour order shipped."),
    ("gmail-signature", "Re: x", GMAIL_SIGNATURE_HTML, "Call me back please."),
    ("hotmail", "Re: x", HOTMAIL_HTML, "Fine by me."),
]


def _html_message(subject: str, html: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "bob@example.com"
    msg["Subject"] = subject
    msg.set_content(html, subtype="html")
    return msg.as_bytes()


def _outcome(got: str, want: str) -> str:
    """exact, kept (more than the writer's text, all of it there) or cut."""
    if got == want:
        return "exact"
    words = want.split()
    return "kept" if all(w in got.split() for w in words) else "cut"


def _results() -> list[tuple[str, str, str]]:
    rows = [(name, written_text(body) or body.strip(), want) for name, body, want in PLAIN]
    rows += [(name, written_text(body, forward=is_forward_subject(subject)), want)
             for name, subject, body, want in FORWARDS]
    rows += [(name, parse_message(_html_message(subject, html)).display_body, want)
             for name, subject, html, want in HTML]
    return rows


@pytest.mark.parametrize(("name", "body", "want"), PLAIN, ids=[r[0] for r in PLAIN])
def test_plain_text(name: str, body: str, want: str) -> None:
    assert (written_text(body) or body.strip()) == want


@pytest.mark.parametrize(("name", "subject", "body", "want"), FORWARDS,
                         ids=[r[0] for r in FORWARDS])
def test_a_forward_keeps_what_it_forwards(name: str, subject: str, body: str, want: str) -> None:
    assert is_forward_subject(subject)
    assert written_text(body, forward=True) == want


@pytest.mark.parametrize(("name", "subject", "html", "want"), HTML, ids=[r[0] for r in HTML])
def test_html_only_replies(name: str, subject: str, html: str, want: str) -> None:
    assert parse_message(_html_message(subject, html)).display_body == want


def test_reply_subjects_are_no_forwards() -> None:
    assert not any(is_forward_subject(s) for s in ("Re: Fwd", "Invoice", "AW: Frage", "I need"))
    assert all(is_forward_subject(s) for s in ("Fwd: x", "FW: x", "WG: x", "TR: x", "Re: Fwd: x"))


def test_the_score_over_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _results()
    assert len(rows) >= 60
    score = {"exact": 0, "kept": 0, "cut": 0}
    for _, got, want in rows:
        score[_outcome(got, want)] += 1
    with capsys.disabled():
        print(f"\ntrimming table: {len(rows)} rows, {score['exact']} exact, "
              f"{score['kept']} kept too much, {score['cut']} cut written text")
    assert score["cut"] == 0
    assert score["exact"] == len(rows)
